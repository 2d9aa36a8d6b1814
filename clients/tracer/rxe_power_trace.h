/* rxe-power verbs tracer: the on-disk record format (shared with harness/workload/tracelog.py).
 *
 * A log is one file per traced process, DIR/rxe-power-trace.<pid>.bin: a 64-byte header
 * then 64-byte records, all little-endian (the machine's order; x86-64 and arm64 only).
 * A record's first word (its type) is written last, so a record whose type is 0 was never
 * finished: the reader stops there (a killed process leaves zeros after its last record).
 * A log that ends without a TR_END record belongs to a process that did not exit normally.
 */
#ifndef RXE_POWER_TRACE_H
#define RXE_POWER_TRACE_H

#include <stdint.h>

#define TR_MAGIC "RXPTRACE"
#define TR_VERSION 2u /* 2: POST records name the context (aux2); imm in result */
#define TR_REC_SIZE 64u
/* exit status of a process whose tracer refused to start (bad RXE_POWER_TRACE_DIR) */
#define TR_REFUSED_EXIT 125

struct tr_header {          /* 64 bytes at file offset 0 */
	char magic[8];          /* TR_MAGIC, no NUL */
	uint32_t version;       /* TR_VERSION */
	uint32_t rec_size;      /* TR_REC_SIZE */
	uint32_t pid;
	uint32_t ppid;
	uint64_t realtime_ns;   /* CLOCK_REALTIME when the log was opened */
	uint64_t monotonic_ns;  /* CLOCK_MONOTONIC at the same moment (records use it) */
	char comm[16];          /* /proc/self/comm */
	uint64_t reserved;
};

struct tr_rec {             /* 64 bytes */
	uint32_t type;          /* enum tr_type; written last */
	uint32_t qp_num;
	uint64_t t_ns;          /* CLOCK_MONOTONIC */
	uint64_t obj;           /* see the per-type notes below */
	uint64_t wr_id;
	uint32_t opcode;
	uint32_t length;
	int32_t result;         /* errno, or a WC status */
	uint32_t flags;
	uint32_t tid;
	uint32_t aux;
	uint64_t aux2;
};

/* Per type (fields not named are 0):
 * DEV_OPEN     obj=context; bytes 24..63 hold the device name (NUL-padded, 40 bytes)
 * DEV_CLOSE    obj=context, result=0 or errno
 * QP_CREATE    qp_num, obj=qp, opcode=qp_type, length=max_send_wr, aux=max_recv_wr,
 *              flags=TR_QPF_*, aux2=context
 * QP_MODIFY    qp_num, obj=qp, opcode=new state (TR_NO_STATE when not in the mask),
 *              aux=attr_mask, aux2=dest_qp_num (TR_NO_QPN when not in the mask), result
 * QP_DESTROY   qp_num, obj=qp, result
 * CQ_CREATE    obj=cq, length=cqe, flags=TR_CQF_*, aux2=context
 * CQ_DESTROY   obj=cq, result
 * POST_SEND / POST_RECV / POST_SRQ_RECV: written BEFORE the provider call, one per WR:
 *              qp_num (0 for an SRQ), wr_id, obj=chain sequence number, opcode (an
 *              ibv_wr_opcode; TR_OP_RECV for receives), length=sum of the SGE lengths
 *              (or of the inline data), flags=TR_WRF_*, aux=index in the chain,
 *              aux2=the QP's context (QP numbers are per device), or the srq pointer
 *              (POST_SRQ_RECV); result=imm_data as the WR carries it (sends with
 *              immediate; version 1 had it in aux2 and no context)
 * POST_FAIL    after a failed post: qp_num, obj=chain sequence number, result=errno,
 *              aux=index of the WR bad_wr pointed to (TR_NO_INDEX: not in the chain;
 *              the whole chain for wr_complete), opcode=TR_POSTK_*
 * COMPLETION   qp_num, wr_id, obj=cq, opcode=wc opcode, length=byte_len, result=status,
 *              flags=wc_flags (| TR_WCF_QPN_UNKNOWN), aux=vendor_err, aux2=imm_data
 * ASYNC_EVENT  opcode=event_type, qp_num (QP events), obj=element pointer, aux=port
 * CALL_FAIL    opcode=TR_CALL_*, result=errno, obj=the object, qp_num when known
 * TEXT         qp_num=chunk index; bytes 16..63 = 48 bytes of /proc/self/cmdline
 * END          wr_id=records written, aux2=records dropped (TR_MAX_BYTES reached)
 */
enum tr_type {
	TR_DEV_OPEN = 1, TR_DEV_CLOSE = 2, TR_QP_CREATE = 3, TR_QP_DESTROY = 4,
	TR_QP_MODIFY = 5, TR_CQ_CREATE = 6, TR_CQ_DESTROY = 7, TR_POST_SEND = 8,
	TR_POST_RECV = 9, TR_POST_SRQ_RECV = 10, TR_POST_FAIL = 11, TR_COMPLETION = 12,
	TR_ASYNC_EVENT = 13, TR_CALL_FAIL = 14, TR_TEXT = 15, TR_END = 16,
};

enum tr_call {
	TR_CALL_OPEN_DEVICE = 1, TR_CALL_CLOSE_DEVICE = 2, TR_CALL_CREATE_QP = 3,
	TR_CALL_CREATE_QP_EX = 4, TR_CALL_DESTROY_QP = 5, TR_CALL_MODIFY_QP = 6,
	TR_CALL_CREATE_CQ = 7, TR_CALL_CREATE_CQ_EX = 8, TR_CALL_DESTROY_CQ = 9,
	TR_CALL_GET_ASYNC_EVENT = 10, TR_CALL_POLL_CQ = 11, TR_CALL_START_POLL = 12,
	TR_CALL_NEXT_POLL = 13, TR_CALL_REG_MR = 14, TR_CALL_DEREG_MR = 15,
	TR_CALL_ALLOC_PD = 16, TR_CALL_DEALLOC_PD = 17, TR_CALL_REQ_NOTIFY_CQ = 18,
	TR_CALL_WR_COMPLETE = 19,
};

enum tr_post_kind { TR_POSTK_SEND = 0, TR_POSTK_RECV = 1, TR_POSTK_SRQ_RECV = 2,
		    TR_POSTK_WR_COMPLETE = 3, TR_POSTK_WR_ABORT = 4 };

#define TR_OP_RECV 128u
#define TR_NO_STATE 0xffu
#define TR_NO_QPN 0xffffffffu
#define TR_NO_INDEX 0xffffffffu

#define TR_WRF_SIGNALED 0x1u   /* IBV_SEND_SIGNALED, or the QP signals every WR */
#define TR_WRF_INLINE 0x2u
#define TR_WRF_SOLICITED 0x4u
#define TR_WRF_FENCE 0x8u
#define TR_WRF_WR_API 0x10u    /* built with the ibv_qp_ex wr_* API */

#define TR_QPF_SQ_SIG_ALL 0x1u
#define TR_QPF_WR_API_TRACED 0x2u  /* created with send_ops_flags; wr_* builders followed */
#define TR_QPF_SRQ 0x4u
#define TR_QPF_CREATED_EX 0x8u

#define TR_CQF_EX 0x1u             /* created with ibv_create_cq_ex */
#define TR_CQF_EX_TRACED 0x2u      /* its start_poll/next_poll are followed */
#define TR_CQF_EX_NO_QPN 0x4u      /* wc_flags lack IBV_WC_EX_WITH_QP_NUM */

#define TR_WCF_QPN_UNKNOWN 0x80000000u

#endif
