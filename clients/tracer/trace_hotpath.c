/* The tracer's hot paths timed without an HCA: the tracer's own source, compiled in, over
 * a fake provider whose post_send/post_recv/poll_cq return at once (one fake context, QP
 * and CQ). Prints one JSON object: nanoseconds per call (CLOCK_MONOTONIC around N calls).
 *   RXE_POWER_TRACE_DIR=DIR build/tracer/trace_hotpath [N]
 * Built by ci/build-tracer.sh; run by `python -m harness.run.bench.tracer_overhead`. */
#include "rxe_power_trace.c"

static int f_post_send(struct ibv_qp *q, struct ibv_send_wr *w, struct ibv_send_wr **b)
{
	(void)q; (void)w; (void)b;
	return 0;
}

static int f_post_recv(struct ibv_qp *q, struct ibv_recv_wr *w, struct ibv_recv_wr **b)
{
	(void)q; (void)w; (void)b;
	return 0;
}

static int f_poll_cq(struct ibv_cq *c, int n, struct ibv_wc *wc)
{
	(void)c;
	for (int i = 0; i < n; i++) {
		wc[i].status = IBV_WC_SUCCESS;
		wc[i].wr_id = (uint64_t)i;
	}
	return n;
}

static double per_call(uint64_t t0, long n)
{
	return (double)(now_ns(CLOCK_MONOTONIC) - t0) / (double)n;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200000;
	if (n < 16 || n > 100000000) {
		fprintf(stderr, "trace_hotpath: N must be 16..100000000\n");
		return 2;
	}
	n -= n % 16;
	static struct ibv_context ctx;
	static struct ibv_qp qp;
	static struct ibv_cq cq;
	ctx.ops.post_send = f_post_send;
	ctx.ops.post_recv = f_post_recv;
	ctx.ops.poll_cq = f_poll_cq;
	struct obj *o = calloc(1, sizeof *o);
	if (!o)
		return 1;
	o->key = &ctx;
	o->kind = OK_CTX;
	o->u.ctx.post_send = f_post_send;
	o->u.ctx.post_recv = f_post_recv;
	o->u.ctx.poll_cq = f_poll_cq;
	if (insert(o))
		return 1;
	qp.context = &ctx;
	qp.qp_num = 17;
	cq.context = &ctx;
	qp_created(&qp, 0, 64, 64, 0, 0, 0);
	static char buf[4096];
	struct ibv_sge sge = { .addr = (uintptr_t)buf, .length = sizeof buf, .lkey = 1 };
	struct ibv_send_wr swr = { .wr_id = 1, .sg_list = &sge, .num_sge = 1,
				   .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED };
	struct ibv_recv_wr rwr = { .wr_id = 1, .sg_list = &sge, .num_sge = 1 };
	struct ibv_send_wr *bs;
	struct ibv_recv_wr *br;
	struct ibv_wc wc[16];
	struct timespec ts;
	double clock_ns, mutex_ns, send_ns, recv_ns, poll1_ns, poll16_ns;
	uint64_t t0;

	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < n; i++)
		clock_gettime(CLOCK_MONOTONIC, &ts);
	clock_ns = per_call(t0, n);
	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < n; i++) {
		pthread_mutex_lock(&g.mu);
		pthread_mutex_unlock(&g.mu);
	}
	mutex_ns = per_call(t0, n);
	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < n; i++) {
		swr.wr_id = (uint64_t)i;
		w_post_send(&qp, &swr, &bs);
	}
	send_ns = per_call(t0, n);
	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < n; i++) {
		rwr.wr_id = (uint64_t)i;
		w_post_recv(&qp, &rwr, &br);
	}
	recv_ns = per_call(t0, n);
	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < n; i++)
		w_poll_cq(&cq, 1, wc);
	poll1_ns = per_call(t0, n);
	t0 = now_ns(CLOCK_MONOTONIC);
	for (long i = 0; i < n / 16; i++)
		w_poll_cq(&cq, 16, wc);
	poll16_ns = per_call(t0, n);
	printf("{\"calls\": %ld, \"clock_gettime_ns\": %.1f, \"mutex_lock_unlock_ns\": %.1f, "
	       "\"post_send_1wr_ns\": %.1f, \"post_recv_1wr_ns\": %.1f, "
	       "\"poll_cq_1_ns\": %.1f, \"poll_cq_16_per_completion_ns\": %.1f, "
	       "\"records\": %llu, \"dropped\": %llu}\n", n, clock_ns, mutex_ns, send_ns, recv_ns,
	       poll1_ns, poll16_ns, (unsigned long long)g.written,
	       (unsigned long long)g.dropped);
	return 0;
}
