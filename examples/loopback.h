/* Two RC QPs in one process connected to each other: one on DEV_A (it sends), one on
 * DEV_B (it receives). With DEV_A = rxe0 and DEV_B = rxe1 the traffic crosses the
 * topology's wire; with one device it loops back inside it. Header-only, for the examples.
 */
#ifndef RXE_POWER_EXAMPLE_LOOPBACK_H
#define RXE_POWER_EXAMPLE_LOOPBACK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <infiniband/verbs.h>

#define LB_MSG 4096
#define LB_DEPTH 16

struct lb_side {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_cq_ex *cqx; /* lb_use_ex: the CQ made with ibv_create_cq_ex */
	struct ibv_qp_ex *qpx; /* lb_use_ex: the QP made with ibv_create_qp_ex (wr_* API) */
	struct ibv_mr *mr;
	struct ibv_qp *qp;
	union ibv_gid gid;
	int gid_index;
	char *buf;
};

struct lb {
	struct lb_side s[2]; /* [0] sends, [1] receives */
};

/* set before lb_open: the extended verbs (ibv_create_cq_ex + start_poll, ibv_create_qp_ex
 * + the ibv_wr_* builders) instead of the classic ones */
static int lb_use_ex;
/* the RC ack timeout exponent (4.096 us << lb_timeout) and retries before RETRY_EXC_ERR */
static int lb_timeout = 14;

static int lb_fail(const char *what, int err)
{
	fprintf(stderr, "%s: errno %d (%s)\n", what, err, strerror(err));
	return err ? err : EIO;
}

static struct ibv_context *lb_open_device(const char *name)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	struct ibv_context *ctx = NULL;
	errno = ENODEV;
	for (int i = 0; list && i < n; i++)
		if (!strcmp(ibv_get_device_name(list[i]), name))
			ctx = ibv_open_device(list[i]);
	if (list)
		ibv_free_device_list(list);
	return ctx;
}

static void lb_close(struct lb *lb)
{
	for (int i = 0; i < 2; i++) {
		struct lb_side *s = &lb->s[i];
		if (s->qp)
			ibv_destroy_qp(s->qp);
		if (s->cq)
			ibv_destroy_cq(s->cq);
		if (s->mr)
			ibv_dereg_mr(s->mr);
		if (s->pd)
			ibv_dealloc_pd(s->pd);
		if (s->ctx)
			ibv_close_device(s->ctx);
		free(s->buf);
	}
	memset(lb, 0, sizeof *lb);
}

static int lb_side_open(struct lb_side *s, const char *dev, int gid_index)
{
	s->gid_index = gid_index;
	if (!(s->buf = calloc(LB_DEPTH, LB_MSG)))
		return lb_fail("calloc", ENOMEM);
	if (!(s->ctx = lb_open_device(dev)))
		return lb_fail("ibv_open_device", errno);
	if (ibv_query_gid(s->ctx, 1, gid_index, &s->gid))
		return lb_fail("ibv_query_gid", errno);
	if (!(s->pd = ibv_alloc_pd(s->ctx)))
		return lb_fail("ibv_alloc_pd", errno);
	if (!(s->mr = ibv_reg_mr(s->pd, s->buf, LB_DEPTH * LB_MSG, IBV_ACCESS_LOCAL_WRITE)))
		return lb_fail("ibv_reg_mr", errno);
	if (lb_use_ex) {
		struct ibv_cq_init_attr_ex ca = { .cqe = 4 * LB_DEPTH, .wc_flags =
			IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_QP_NUM };
		if (!(s->cqx = ibv_create_cq_ex(s->ctx, &ca)))
			return lb_fail("ibv_create_cq_ex", errno);
		s->cq = ibv_cq_ex_to_cq(s->cqx);
	} else if (!(s->cq = ibv_create_cq(s->ctx, 4 * LB_DEPTH, NULL, NULL, 0))) {
		return lb_fail("ibv_create_cq", errno);
	}
	struct ibv_qp_init_attr_ex a = { .send_cq = s->cq, .recv_cq = s->cq, .qp_type = IBV_QPT_RC,
		.sq_sig_all = 1, .cap = { .max_send_wr = LB_DEPTH, .max_recv_wr = LB_DEPTH,
					  .max_send_sge = 1, .max_recv_sge = 1 },
		.pd = s->pd, .comp_mask = IBV_QP_INIT_ATTR_PD };
	if (lb_use_ex) {
		a.comp_mask |= IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
		a.send_ops_flags = IBV_QP_EX_WITH_SEND;
		if (!(s->qp = ibv_create_qp_ex(s->ctx, &a)))
			return lb_fail("ibv_create_qp_ex", errno);
		s->qpx = ibv_qp_to_qp_ex(s->qp);
	} else if (!(s->qp = ibv_create_qp(s->pd, (struct ibv_qp_init_attr *)&a))) {
		return lb_fail("ibv_create_qp", errno);
	}
	struct ibv_qp_attr init = { .qp_state = IBV_QPS_INIT, .port_num = 1 };
	if (ibv_modify_qp(s->qp, &init, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
			  IBV_QP_ACCESS_FLAGS))
		return lb_fail("ibv_modify_qp INIT", errno);
	return 0;
}

static int lb_side_connect(struct lb_side *s, const struct lb_side *to)
{
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_1024,
		.dest_qp_num = to->qp->qp_num, .rq_psn = 0, .max_dest_rd_atomic = 1,
		.min_rnr_timer = 12, .ah_attr = { .is_global = 1, .port_num = 1,
		.grh = { .dgid = to->gid, .sgid_index = (uint8_t)s->gid_index, .hop_limit = 1 } } };
	if (ibv_modify_qp(s->qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
			  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
		return lb_fail("ibv_modify_qp RTR", errno);
	/* retry_cnt 7 is "forever" on rxe: 6 lets a sender learn that its peer is gone */
	struct ibv_qp_attr r = { .qp_state = IBV_QPS_RTS, .timeout = (uint8_t)lb_timeout,
		.retry_cnt = 6,
		.rnr_retry = 7, .sq_psn = 0, .max_rd_atomic = 1 };
	if (ibv_modify_qp(s->qp, &r, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
			  IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
		return lb_fail("ibv_modify_qp RTS", errno);
	return 0;
}

/* 0, or an errno (said on stderr; call lb_close either way) */
static int lb_open(struct lb *lb, const char *dev_a, int gid_a, const char *dev_b, int gid_b)
{
	memset(lb, 0, sizeof *lb);
	int err = lb_side_open(&lb->s[0], dev_a, gid_a);
	if (!err)
		err = lb_side_open(&lb->s[1], dev_b, gid_b);
	if (!err)
		err = lb_side_connect(&lb->s[0], &lb->s[1]);
	if (!err)
		err = lb_side_connect(&lb->s[1], &lb->s[0]);
	return err;
}

/* returns what ibv_post_send returned (0 or an errno) */
static int lb_post_send(struct lb *lb, uint64_t wr_id)
{
	struct lb_side *s = &lb->s[0];
	if (s->qpx) {
		ibv_wr_start(s->qpx);
		s->qpx->wr_id = wr_id;
		s->qpx->wr_flags = IBV_SEND_SIGNALED;
		ibv_wr_send(s->qpx);
		ibv_wr_set_sge(s->qpx, s->mr->lkey,
			       (uintptr_t)s->buf + (size_t)(wr_id % LB_DEPTH) * LB_MSG, LB_MSG);
		return ibv_wr_complete(s->qpx);
	}
	struct ibv_sge sge = { .addr = (uintptr_t)s->buf + (size_t)(wr_id % LB_DEPTH) * LB_MSG,
			       .length = LB_MSG, .lkey = s->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = wr_id, .sg_list = &sge, .num_sge = 1,
				  .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
	return ibv_post_send(s->qp, &wr, &bad);
}

static int lb_post_recv(struct lb *lb, uint64_t wr_id)
{
	struct lb_side *s = &lb->s[1];
	struct ibv_sge sge = { .addr = (uintptr_t)s->buf + (size_t)(wr_id % LB_DEPTH) * LB_MSG,
			       .length = LB_MSG, .lkey = s->mr->lkey };
	struct ibv_recv_wr wr = { .wr_id = wr_id, .sg_list = &sge, .num_sge = 1 }, *bad;
	return ibv_post_recv(s->qp, &wr, &bad);
}

#endif
