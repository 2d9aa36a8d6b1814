/* wr_api_client: traffic through the extended verbs only, to show that the tracer follows
 * them: a QP from ibv_create_qp_ex posted with ibv_wr_start / ibv_wr_send /
 * ibv_wr_set_sge / ibv_wr_complete, CQs from ibv_create_cq_ex read with ibv_start_poll /
 * ibv_next_poll / ibv_end_poll.
 *
 *   wr_api_client DEV GID_INDEX PEER_DEV PEER_GID_INDEX COUNT [drain]
 *
 * Sends COUNT 4 KiB SENDs from DEV to PEER_DEV (both its own QPs, see loopback.h), at most
 * LB_DEPTH in flight; exit 0 when every one completed with success and was received, 1 at
 * the first error.
 *
 * How it polls, and why: rdma-core's rxe provider up to version 54 advances a CQ's
 * consumer index twice when ibv_next_poll() returns ENOENT and ibv_end_poll() follows
 * (which the man page requires): the index passes the producer, the next
 * ibv_start_poll() finds the ring "full" of stale entries, and the receiver reposts a
 * receive for each of them until ibv_post_recv() fails with ENOMEM (its ring is full).
 * Fixed upstream in rdma-core 55 ("rxe: fix completion queue consumer index overrun",
 * b78b414e0; the double unlock on the same path in 58, 5e7aa4102). So ibv_next_poll() is
 * called here only while a completion is known to be there: on the send CQ one
 * completion per ibv_start_poll()/ibv_end_poll() pair; on the receive CQ as many as
 * there are SENDs that completed and were not received yet (rxe posts a receive's
 * completion before it acknowledges the SEND). With `drain` it polls as the man page
 * shows, until ENOENT, to reproduce the provider's fault
 * (tests/rxe/test_rxe_behaviour.py).
 */
#include "loopback.h"

static struct lb lb;
static int drain_mode;

/* one completion read by ibv_start_poll/ibv_next_poll: -1 if not a success (said) */
static int check_wc(struct ibv_cq_ex *cq)
{
	if (cq->status == IBV_WC_SUCCESS)
		return 0;
	fprintf(stderr, "wr_api_client: wr_id %llu status %s\n",
		(unsigned long long)cq->wr_id, ibv_wc_status_str(cq->status));
	return -1;
}

/* the man page's loop: every completion there is, until ibv_next_poll() says ENOENT
 * (reproduces rxe's consumer index overrun on rdma-core < 55, see above). Counts sends
 * done (side 0), reposts the receives (side 1) once the poll is ended; -1 at an error */
static int drain_cq(int side, int *done, int *received)
{
	struct ibv_poll_cq_attr attr = { 0 };
	struct ibv_cq_ex *cq = lb.s[side].cqx;
	uint64_t repost[4 * LB_DEPTH];
	int n = 0, bad = 0;
	int ret = ibv_start_poll(cq, &attr);
	if (ret == ENOENT)
		return 0;
	if (ret)
		return lb_fail("ibv_start_poll", ret), -1;
	do {
		if (check_wc(cq))
			bad = 1;
		else if (side == 0)
			(*done)++;
		else if (n < 4 * LB_DEPTH)
			repost[n++] = cq->wr_id;
	} while (!bad && (ret = ibv_next_poll(cq)) == 0);
	ibv_end_poll(cq);
	if (!bad && ret != ENOENT)
		return lb_fail("ibv_next_poll", ret), -1;
	for (int i = 0; i < n && !bad; i++) {
		int err = lb_post_recv(&lb, repost[i]);
		if (err)
			return lb_fail("ibv_post_recv", err), -1;
		(*received)++;
	}
	return bad ? -1 : 0;
}

/* the send CQ: each completion there is, one per ibv_start_poll/ibv_end_poll pair */
static int poll_sends(int *done)
{
	struct ibv_poll_cq_attr attr = { 0 };
	struct ibv_cq_ex *cq = lb.s[0].cqx;
	int ret;
	while ((ret = ibv_start_poll(cq, &attr)) == 0) {
		int bad = check_wc(cq);
		ibv_end_poll(cq);
		if (bad)
			return -1;
		(*done)++;
	}
	return ret == ENOENT ? 0 : (lb_fail("ibv_start_poll", ret), -1);
}

/* the receive CQ: the `known` completions that must be there (their SENDs completed),
 * in one ibv_start_poll/ibv_next_poll.../ibv_end_poll, then each receive reposted */
static int poll_receives(int known, int *received)
{
	struct ibv_poll_cq_attr attr = { 0 };
	struct ibv_cq_ex *cq = lb.s[1].cqx;
	uint64_t repost[LB_DEPTH];
	int n = 0, bad = 0, ret;
	if (known <= 0)
		return 0;
	if (known > LB_DEPTH) {
		fprintf(stderr, "wr_api_client: %d receives outstanding, more than the %d posted\n",
			known, LB_DEPTH);
		return -1;
	}
	if ((ret = ibv_start_poll(cq, &attr))) {
		fprintf(stderr, "wr_api_client: %d receive completions due, ibv_start_poll: %s\n",
			known, strerror(ret));
		return -1;
	}
	for (;;) {
		if (check_wc(cq))
			bad = 1;
		else
			repost[n++] = cq->wr_id;
		if (bad || n == known)
			break;
		if ((ret = ibv_next_poll(cq))) {
			fprintf(stderr, "wr_api_client: %d receive completions due, ibv_next_poll "
				"after %d: %s\n", known, n, strerror(ret));
			bad = 1;
			break;
		}
	}
	ibv_end_poll(cq);
	for (int i = 0; i < n && !bad; i++) {
		int err = lb_post_recv(&lb, repost[i]);
		if (err)
			return lb_fail("ibv_post_recv", err), -1;
		(*received)++;
	}
	return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
	if (argc != 6 && !(argc == 7 && !strcmp(argv[6], "drain"))) {
		fprintf(stderr, "usage: %s DEV GID_INDEX PEER_DEV PEER_GID_INDEX COUNT [drain]\n",
			argv[0]);
		return 2;
	}
	drain_mode = argc == 7;
	lb_use_ex = 1;
	if (lb_open(&lb, argv[1], atoi(argv[2]), argv[3], atoi(argv[4]))) {
		lb_close(&lb);
		return 1;
	}
	for (int i = 0; i < LB_DEPTH; i++)
		if (lb_post_recv(&lb, (uint64_t)i))
			return lb_fail("ibv_post_recv", errno), 1;
	int count = atoi(argv[5]), sent = 0, done = 0, received = 0;
	while (done < count || received < count) {
		while (sent < count && sent - done < LB_DEPTH) {
			int err = lb_post_send(&lb, (uint64_t)sent);
			if (err)
				return lb_fail("ibv_wr_complete", err), 1;
			sent++;
		}
		if (drain_mode) {
			if (drain_cq(0, &done, &received) || drain_cq(1, &done, &received))
				return 1;
			if (done == count)
				break; /* the man page's loop does not count receives */
		} else if (poll_sends(&done) || poll_receives(done - received, &received)) {
			return 1;
		}
	}
	printf("wr_api_client: %d sends completed, %d received\n", done, received);
	lb_close(&lb);
	return 0;
}
