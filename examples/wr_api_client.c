/* wr_api_client: traffic through the extended verbs only, to show that the tracer follows
 * them: a QP from ibv_create_qp_ex posted with ibv_wr_start / ibv_wr_send /
 * ibv_wr_set_sge / ibv_wr_complete, CQs from ibv_create_cq_ex read with ibv_start_poll /
 * ibv_next_poll / ibv_end_poll.
 *
 *   wr_api_client DEV GID_INDEX PEER_DEV PEER_GID_INDEX COUNT
 *
 * Sends COUNT 4 KiB SENDs from DEV to PEER_DEV (both its own QPs, see loopback.h), at most
 * LB_DEPTH in flight; exit 0 when every one completed with success, 1 at the first error.
 */
#include "loopback.h"

static struct lb lb;

/* the completions waiting on one side's CQ: counts sends done (side 0), reposts the
 * receives (side 1) once the poll is ended; -1 at an error (said on stderr) */
static int drain_cq(int side, int *done)
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
		if (cq->status != IBV_WC_SUCCESS) {
			fprintf(stderr, "wr_api_client: wr_id %llu status %s\n",
				(unsigned long long)cq->wr_id, ibv_wc_status_str(cq->status));
			bad = 1;
		} else if (side == 0) {
			(*done)++;
		} else if (n < 4 * LB_DEPTH) {
			repost[n++] = cq->wr_id;
		}
	} while (!bad && (ret = ibv_next_poll(cq)) == 0);
	ibv_end_poll(cq);
	if (!bad && ret != ENOENT)
		return lb_fail("ibv_next_poll", ret), -1;
	for (int i = 0; i < n && !bad; i++) {
		int err = lb_post_recv(&lb, repost[i]);
		if (err)
			return lb_fail("ibv_post_recv", err), -1;
	}
	return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s DEV GID_INDEX PEER_DEV PEER_GID_INDEX COUNT\n", argv[0]);
		return 2;
	}
	lb_use_ex = 1;
	if (lb_open(&lb, argv[1], atoi(argv[2]), argv[3], atoi(argv[4]))) {
		lb_close(&lb);
		return 1;
	}
	for (int i = 0; i < LB_DEPTH; i++)
		if (lb_post_recv(&lb, (uint64_t)i))
			return lb_fail("ibv_post_recv", errno), 1;
	int count = atoi(argv[5]), sent = 0, done = 0;
	while (done < count) {
		while (sent < count && sent - done < LB_DEPTH) {
			int err = lb_post_send(&lb, (uint64_t)sent);
			if (err)
				return lb_fail("ibv_wr_complete", err), 1;
			sent++;
		}
		if (drain_cq(0, &done) || drain_cq(1, &done))
			return 1;
	}
	printf("wr_api_client: %d sends completed\n", done);
	lb_close(&lb);
	return 0;
}
