/* broken_client: a deliberately bad verbs program, for the tracer's ledger to judge.
 *
 *   broken_client DEV GID_INDEX PEER_DEV PEER_GID_INDEX SECONDS
 *
 * Sends 4 KiB messages from an RC QP on DEV to one on PEER_DEV (both its own, see
 * loopback.h) for SECONDS, and does
 * everything a client should not: it never listens to the power shim's notices, never
 * checks what ibv_post_send / ibv_post_recv return, ignores the status of every
 * completion, and keeps posting after its QP went to the error state or its device went
 * away. It exits 0 whatever happened (so only the trace can say what went wrong).
 */
#include <time.h>
#include <unistd.h>

#include "loopback.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s DEV GID_INDEX PEER_DEV PEER_GID_INDEX SECONDS\n", argv[0]);
		return 2;
	}
	struct lb lb;
	lb_timeout = 8; /* ~1 ms: a send caught by a link loss fails within the loss */
	if (lb_open(&lb, argv[1], atoi(argv[2]), argv[3], atoi(argv[4])))
		return 1;
	for (int i = 0; i < LB_DEPTH; i++)
		lb_post_recv(&lb, (uint64_t)i);
	double end = now_s() + atof(argv[5]);
	uint64_t sent = 0, completions = 0;
	while (now_s() < end) {
		lb_post_send(&lb, sent); /* result ignored */
		sent++;
		struct ibv_wc wc[16];
		for (int side = 0; side < 2; side++) {
			int n = ibv_poll_cq(lb.s[side].cq, 16, wc);
			for (int i = 0; i < n; i++) {
				completions++; /* status ignored */
				if (side == 1)
					lb_post_recv(&lb, wc[i].wr_id);
			}
		}
		usleep(1000); /* keeps the send queue busy: something is always in flight */
	}
	printf("broken_client: posted %llu sends, saw %llu completions\n",
	       (unsigned long long)sent, (unsigned long long)completions);
	lb_close(&lb);
	return 0;
}
