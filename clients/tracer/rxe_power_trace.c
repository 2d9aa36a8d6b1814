/* rxe-power verbs tracer: LD_PRELOAD=.../librxe_power_trace.so PROG ARGS
 *
 * Records what an unmodified verbs program asks of its HCA and what comes back, into
 * $RXE_POWER_TRACE_DIR/rxe-power-trace.<pid>.bin (format: rxe_power_trace.h).
 *
 * What is followed:
 *  - exported entry points, by interposition (dlsym RTLD_NEXT): ibv_open_device,
 *    ibv_close_device, ibv_create_qp, ibv_destroy_qp, ibv_modify_qp, ibv_create_cq,
 *    ibv_destroy_cq, ibv_get_async_event (and, for their errors only, ibv_reg_mr,
 *    ibv_reg_mr_iova2, ibv_dereg_mr, ibv_alloc_pd, ibv_dealloc_pd);
 *  - the inline data path, by replacing the entries of each opened context's ops table:
 *    post_send, post_recv, post_srq_recv, poll_cq, req_notify_cq (errors), and in its
 *    verbs_context create_qp_ex and create_cq_ex (ibv_create_qp_ex/ibv_create_cq_ex are
 *    inline);
 *  - the extended paths: a QP created with send_ops_flags has its ibv_qp_ex wr_*
 *    builders, setters, wr_start/wr_complete/wr_abort wrapped; a CQ from ibv_create_cq_ex
 *    has start_poll/next_poll wrapped (its QP number is recorded only when the CQ was
 *    created with IBV_WC_EX_WITH_QP_NUM, else the completion says so).
 * Not followed: mlx5dv/other direct-verbs data paths, XRC/ DC specifics, ibv_post_srq_ops,
 * ibv_wr_* on a QP created without send_ops_flags (it cannot use them), and work done
 * in a process that did not load the library (a setuid program drops LD_PRELOAD).
 *
 * Cost: one 64-byte record per WR and per completion, written into a MAP_SHARED mapping
 * of the log under one mutex: no system call on the data path, and the records survive
 * any death of the process (SIGKILL included) because they are already in the page cache.
 * The file grows by TR_CHUNK_BYTES; it is trimmed to its records at a normal exit.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <infiniband/verbs.h>

#include "rxe_power_trace.h"

#define TR_CHUNK_BYTES (4u << 20)
#define TR_CHUNK_RECS (TR_CHUNK_BYTES / TR_REC_SIZE)
#define TR_DEFAULT_MAX_BYTES (1ull << 30)
#define TR_PENDING_MAX 32
#define TR_TABLE_SLOTS 8192u /* open objects (contexts, QPs, CQs) at once */

_Static_assert(sizeof(struct tr_rec) == TR_REC_SIZE, "record size");
_Static_assert(sizeof(struct tr_header) == TR_REC_SIZE, "header size");

/* ---------------------------------------------------------------- the log */

static struct {
	pthread_mutex_t mu;
	char dir[4096];
	int fd;                 /* -1: not opened yet (opened at the first record) */
	int finished;
	char *chunk;            /* mapping of the current chunk */
	uint64_t chunk_off;     /* its file offset */
	uint32_t pos;           /* next record slot in the chunk */
	uint64_t max_bytes;
	uint64_t written, dropped;
	uint64_t chain_seq;
} g = { .mu = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

static uint64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, const char *fix, int err)
{
	char msg[6000];
	int n = snprintf(msg, sizeof msg, "rxe_power_trace: error: %s%s%s; fix: %s\n", what,
			 err ? ": " : "", err ? strerror(err) : "", fix);
	if (n > 0)
		(void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
	_exit(TR_REFUSED_EXIT);
}

static int map_chunk(uint64_t off)
{
	if (ftruncate(g.fd, (off_t)(off + TR_CHUNK_BYTES)) != 0)
		return errno;
	void *p = mmap(NULL, TR_CHUNK_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, g.fd, (off_t)off);
	if (p == MAP_FAILED)
		return errno;
	g.chunk = p;
	g.chunk_off = off;
	g.pos = 0;
	return 0;
}

static void write_cmdline(void);

/* called with g.mu held */
static int open_log(void)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/rxe-power-trace.%d.bin", g.dir, (int)getpid());
	g.fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (g.fd < 0)
		die("cannot create the trace log in RXE_POWER_TRACE_DIR",
		    "make the directory writable by this user and free of old logs of this pid",
		    errno);
	int err = map_chunk(0);
	if (err)
		die("cannot map the trace log shared (9p, NFS and some FUSE file systems cannot)",
		    "put RXE_POWER_TRACE_DIR on a local or tmpfs file system with free space", err);
	struct tr_header *h = (struct tr_header *)g.chunk;
	memcpy(h->magic, TR_MAGIC, 8);
	h->version = TR_VERSION;
	h->rec_size = TR_REC_SIZE;
	h->pid = (uint32_t)getpid();
	h->ppid = (uint32_t)getppid();
	h->realtime_ns = now_ns(CLOCK_REALTIME);
	h->monotonic_ns = now_ns(CLOCK_MONOTONIC);
	int cfd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
	if (cfd >= 0) {
		ssize_t n = read(cfd, h->comm, sizeof h->comm - 1);
		if (n > 0 && h->comm[n - 1] == '\n')
			h->comm[n - 1] = 0;
		close(cfd);
	}
	g.pos = 1;
	write_cmdline();
	return 0;
}

/* called with g.mu held; returns a slot or NULL (dropped). The END record (last) may
 * go past max_bytes by one chunk. */
static struct tr_rec *slot(int last)
{
	if (g.finished)
		return NULL;
	if (g.fd < 0)
		open_log();
	if (g.pos == TR_CHUNK_RECS) {
		uint64_t next = g.chunk_off + TR_CHUNK_BYTES;
		if (!last && next + TR_CHUNK_BYTES > g.max_bytes) {
			g.dropped++;
			return NULL;
		}
		munmap(g.chunk, TR_CHUNK_BYTES);
		g.chunk = NULL;
		if (map_chunk(next)) {
			g.finished = 1; /* out of space: stop, the log says it was not closed */
			return NULL;
		}
	}
	struct tr_rec *r = (struct tr_rec *)(g.chunk + (size_t)g.pos * TR_REC_SIZE);
	g.pos++;
	g.written++;
	return r;
}

static void put_locked(struct tr_rec *src)
{
	struct tr_rec *r = slot(src->type == TR_END);
	if (!r)
		return;
	uint32_t type = src->type;
	src->type = 0;
	memcpy(r, src, sizeof *r);
	__atomic_store_n(&r->type, type, __ATOMIC_RELEASE);
}

static __thread uint32_t my_tid;

static uint32_t tid(void)
{
	if (!my_tid)
		my_tid = (uint32_t)syscall(SYS_gettid);
	return my_tid;
}

static void put(struct tr_rec *src)
{
	if (!src->t_ns)
		src->t_ns = now_ns(CLOCK_MONOTONIC);
	src->tid = tid();
	pthread_mutex_lock(&g.mu);
	put_locked(src);
	pthread_mutex_unlock(&g.mu);
}

static void write_cmdline(void)
{
	char buf[4096];
	int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf);
	close(fd);
	for (ssize_t off = 0, i = 0; n > 0 && off < n; off += 48, i++) {
		struct tr_rec r = { .type = TR_TEXT, .qp_num = (uint32_t)i };
		size_t len = (size_t)(n - off) < 48 ? (size_t)(n - off) : 48;
		memcpy((char *)&r + 16, buf + off, len);
		put_locked(&r);
	}
}

static void finish(void)
{
	pthread_mutex_lock(&g.mu);
	if (!g.finished && g.fd >= 0) {
		struct tr_rec e = { .type = TR_END, .t_ns = now_ns(CLOCK_MONOTONIC) };
		e.wr_id = g.written + 1;
		e.aux2 = g.dropped;
		put_locked(&e);
		uint64_t size = g.chunk_off + (uint64_t)g.pos * TR_REC_SIZE;
		munmap(g.chunk, TR_CHUNK_BYTES);
		g.chunk = NULL;
		(void)!ftruncate(g.fd, (off_t)size);
		close(g.fd);
		g.fd = -1;
	}
	g.finished = 1;
	pthread_mutex_unlock(&g.mu);
}

static void child_after_fork(void)
{
	/* the parent's mapping is shared: the child must not write into it */
	if (g.chunk)
		munmap(g.chunk, TR_CHUNK_BYTES);
	if (g.fd >= 0)
		close(g.fd);
	g.chunk = NULL;
	g.fd = -1;
	g.written = g.dropped = 0;
	my_tid = 0;
	pthread_mutex_init(&g.mu, NULL);
}

static void fork_prepare(void) { pthread_mutex_lock(&g.mu); }
static void fork_parent(void) { pthread_mutex_unlock(&g.mu); }

__attribute__((constructor)) static void tr_init(void)
{
	const char *dir = getenv("RXE_POWER_TRACE_DIR");
	if (!dir || !*dir)
		die("RXE_POWER_TRACE_DIR is not set", "set it to a directory you own with mode "
		    "0700, or do not preload the tracer", 0);
	if (dir[0] != '/' || strlen(dir) >= sizeof g.dir - 64)
		die("RXE_POWER_TRACE_DIR must be an absolute path shorter than 4000 bytes",
		    "give an absolute path", 0);
	struct stat st;
	if (lstat(dir, &st) != 0)
		die("cannot stat RXE_POWER_TRACE_DIR", "create the directory first (mode 0700)",
		    errno);
	if (!S_ISDIR(st.st_mode))
		die("RXE_POWER_TRACE_DIR is not a directory (symbolic links are refused)",
		    "give the real directory", 0);
	if (st.st_uid != geteuid())
		die("RXE_POWER_TRACE_DIR is owned by another user",
		    "use a directory owned by the traced program's user", 0);
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		die("RXE_POWER_TRACE_DIR is writable by group or others",
		    "chmod go-w it (0700 is best)", 0);
	strcpy(g.dir, dir);
	g.max_bytes = TR_DEFAULT_MAX_BYTES;
	const char *mx = getenv("RXE_POWER_TRACE_MAX_MB");
	if (mx && *mx) {
		char *end;
		unsigned long long mb = strtoull(mx, &end, 10);
		if (*end || mb < 8 || mb > (1ull << 20))
			die("RXE_POWER_TRACE_MAX_MB must be a whole number of MiB in 8..1048576",
			    "fix or unset it", 0);
		g.max_bytes = mb << 20;
	}
	pthread_atfork(fork_prepare, fork_parent, child_after_fork);
}

__attribute__((destructor)) static void tr_fini(void) { finish(); }

/* ---------------------------------------------------------------- object table */

enum obj_kind { OK_CTX = 1, OK_QP = 2, OK_CQ = 3 };

struct ctx_state {
	int (*post_send)(struct ibv_qp *, struct ibv_send_wr *, struct ibv_send_wr **);
	int (*post_recv)(struct ibv_qp *, struct ibv_recv_wr *, struct ibv_recv_wr **);
	int (*post_srq_recv)(struct ibv_srq *, struct ibv_recv_wr *, struct ibv_recv_wr **);
	int (*poll_cq)(struct ibv_cq *, int, struct ibv_wc *);
	int (*req_notify_cq)(struct ibv_cq *, int);
	struct ibv_qp *(*create_qp_ex)(struct ibv_context *, struct ibv_qp_init_attr_ex *);
	struct ibv_cq_ex *(*create_cq_ex)(struct ibv_context *, struct ibv_cq_init_attr_ex *);
};

struct pending_wr {
	uint64_t wr_id;
	uint32_t opcode, length, flags, imm;
};

struct qp_state {
	uint32_t qp_num;
	uint64_t context;               /* the ibv_context, as POST records name it */
	int sig_all;
	struct ibv_qp_ex orig;          /* the provider's wr_* entries */
	uint64_t chain;                 /* current wr_start..wr_complete chain */
	uint32_t index, npending, have_cur;
	struct pending_wr cur;
	struct pending_wr pending[TR_PENDING_MAX];
};

struct cq_state {
	uint64_t wc_flags;
	struct ibv_cq_ex orig;
};

struct obj {
	const void *key;
	int kind;
	union {
		struct ctx_state ctx;
		struct qp_state *qp;
		struct cq_state cq;
	} u;
};

static struct obj *table[TR_TABLE_SLOTS];
static const void *const TOMB = (const void *)1;

static uint32_t hash_ptr(const void *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return (uint32_t)x & (TR_TABLE_SLOTS - 1);
}

/* lock-free lookup: entries are published with a release store and freed only when
 * the program destroys the object (using it afterwards is the program's bug) */
static struct obj *lookup(const void *key, int kind)
{
	for (uint32_t i = hash_ptr(key), n = 0; n < TR_TABLE_SLOTS; n++, i = (i + 1) & (TR_TABLE_SLOTS - 1)) {
		struct obj *o = __atomic_load_n(&table[i], __ATOMIC_ACQUIRE);
		if (!o)
			return NULL;
		if (o != TOMB && o->key == key && o->kind == kind)
			return o;
	}
	return NULL;
}

static int insert(struct obj *o)
{
	pthread_mutex_lock(&g.mu);
	for (uint32_t i = hash_ptr(o->key), n = 0; n < TR_TABLE_SLOTS; n++, i = (i + 1) & (TR_TABLE_SLOTS - 1)) {
		if (!table[i] || table[i] == TOMB) {
			__atomic_store_n(&table[i], o, __ATOMIC_RELEASE);
			pthread_mutex_unlock(&g.mu);
			return 0;
		}
	}
	pthread_mutex_unlock(&g.mu);
	return -1;
}

static void remove_obj(const void *key, int kind)
{
	pthread_mutex_lock(&g.mu);
	for (uint32_t i = hash_ptr(key), n = 0; n < TR_TABLE_SLOTS; n++, i = (i + 1) & (TR_TABLE_SLOTS - 1)) {
		struct obj *o = table[i];
		if (!o)
			break;
		if (o != TOMB && o->key == key && o->kind == kind) {
			__atomic_store_n(&table[i], (struct obj *)TOMB, __ATOMIC_RELEASE);
			if (kind == OK_QP)
				free(o->u.qp);
			free(o); /* see lookup: use after destroy is the program's bug */
			break;
		}
	}
	pthread_mutex_unlock(&g.mu);
}

static struct ctx_state *ctx_of(struct ibv_context *c)
{
	struct obj *o = lookup(c, OK_CTX);
	return o ? &o->u.ctx : NULL;
}

static void call_fail(uint32_t call, int err, const void *obj, uint32_t qp_num)
{
	struct tr_rec r = { .type = TR_CALL_FAIL, .opcode = call, .result = err,
			    .obj = (uintptr_t)obj, .qp_num = qp_num };
	put(&r);
}

#define REAL(name) \
	static __typeof__(&name) real_##name; \
	if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

/* ---------------------------------------------------------------- data path: post */

static uint32_t send_flags_of(unsigned int f, int sig_all)
{
	return ((f & IBV_SEND_SIGNALED) || sig_all ? TR_WRF_SIGNALED : 0) |
	       (f & IBV_SEND_INLINE ? TR_WRF_INLINE : 0) |
	       (f & IBV_SEND_SOLICITED ? TR_WRF_SOLICITED : 0) |
	       (f & IBV_SEND_FENCE ? TR_WRF_FENCE : 0);
}

static uint64_t next_chain(void)
{
	return __atomic_add_fetch(&g.chain_seq, 1, __ATOMIC_RELAXED);
}

static void post_fail(uint32_t qp_num, uint64_t chain, int err, uint32_t bad, uint32_t kind)
{
	struct tr_rec r = { .type = TR_POST_FAIL, .qp_num = qp_num, .obj = chain,
			    .result = err, .aux = bad, .opcode = kind };
	put(&r);
}

static int w_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
	struct ctx_state *cs = ctx_of(qp->context);
	struct obj *qo = lookup(qp, OK_QP);
	int sig_all = qo ? qo->u.qp->sig_all : 0;
	uint64_t chain = next_chain();
	uint32_t i = 0;
	for (struct ibv_send_wr *w = wr; w; w = w->next, i++) {
		struct tr_rec r = { .type = TR_POST_SEND, .qp_num = qp->qp_num, .wr_id = w->wr_id,
				    .obj = chain, .opcode = w->opcode, .aux = i,
				    .aux2 = (uintptr_t)qp->context,
				    .flags = send_flags_of(w->send_flags, sig_all) };
		for (int s = 0; s < w->num_sge; s++)
			r.length += w->sg_list[s].length;
		if (w->opcode == IBV_WR_SEND_WITH_IMM || w->opcode == IBV_WR_RDMA_WRITE_WITH_IMM)
			r.result = (int32_t)w->imm_data;
		put(&r);
	}
	struct ibv_send_wr *b = NULL;
	int ret = cs->post_send(qp, wr, &b);
	if (bad)
		*bad = b;
	if (ret) {
		uint32_t bi = 0;
		struct ibv_send_wr *w = wr;
		for (; w && w != b; w = w->next)
			bi++;
		post_fail(qp->qp_num, chain, ret, w ? bi : TR_NO_INDEX, TR_POSTK_SEND);
	}
	return ret;
}

static int post_recv_common(uint32_t type, uint32_t qp_num, uint64_t ctx_or_srq, struct ibv_recv_wr *wr,
			    uint64_t *chain)
{
	*chain = next_chain();
	uint32_t i = 0;
	for (struct ibv_recv_wr *w = wr; w; w = w->next, i++) {
		struct tr_rec r = { .type = type, .qp_num = qp_num, .wr_id = w->wr_id, .obj = *chain,
				    .opcode = TR_OP_RECV, .aux = i, .aux2 = ctx_or_srq };
		for (int s = 0; s < w->num_sge; s++)
			r.length += w->sg_list[s].length;
		put(&r);
	}
	return 0;
}

static void recv_result(int ret, uint32_t qp_num, uint64_t chain, struct ibv_recv_wr *wr,
			struct ibv_recv_wr *b, uint32_t kind)
{
	if (!ret)
		return;
	uint32_t bi = 0;
	struct ibv_recv_wr *w = wr;
	for (; w && w != b; w = w->next)
		bi++;
	post_fail(qp_num, chain, ret, w ? bi : TR_NO_INDEX, kind);
}

static int w_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
	struct ctx_state *cs = ctx_of(qp->context);
	uint64_t chain;
	post_recv_common(TR_POST_RECV, qp->qp_num, (uintptr_t)qp->context, wr, &chain);
	struct ibv_recv_wr *b = NULL;
	int ret = cs->post_recv(qp, wr, &b);
	if (bad)
		*bad = b;
	recv_result(ret, qp->qp_num, chain, wr, b, TR_POSTK_RECV);
	return ret;
}

static int w_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
	struct ctx_state *cs = ctx_of(srq->context);
	uint64_t chain;
	post_recv_common(TR_POST_SRQ_RECV, 0, (uintptr_t)srq, wr, &chain);
	struct ibv_recv_wr *b = NULL;
	int ret = cs->post_srq_recv(srq, wr, &b);
	if (bad)
		*bad = b;
	recv_result(ret, 0, chain, wr, b, TR_POSTK_SRQ_RECV);
	return ret;
}

/* ---------------------------------------------------------------- data path: poll */

static int w_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc)
{
	struct ctx_state *cs = ctx_of(cq->context);
	int got = cs->poll_cq(cq, n, wc);
	if (got < 0) {
		call_fail(TR_CALL_POLL_CQ, got == -1 ? errno : -got, cq, 0);
		return got;
	}
	if (got == 0)
		return got;
	uint64_t t = now_ns(CLOCK_MONOTONIC);
	uint32_t me = tid();
	pthread_mutex_lock(&g.mu);
	for (int i = 0; i < got; i++) {
		struct tr_rec r = { .type = TR_COMPLETION, .qp_num = wc[i].qp_num,
				    .wr_id = wc[i].wr_id, .obj = (uintptr_t)cq, .t_ns = t,
				    .opcode = wc[i].opcode, .length = wc[i].byte_len,
				    .result = wc[i].status, .flags = wc[i].wc_flags,
				    .aux = wc[i].vendor_err, .aux2 = wc[i].imm_data, .tid = me };
		put_locked(&r);
	}
	pthread_mutex_unlock(&g.mu);
	return got;
}

static int w_req_notify_cq(struct ibv_cq *cq, int solicited)
{
	struct ctx_state *cs = ctx_of(cq->context);
	int ret = cs->req_notify_cq(cq, solicited);
	if (ret)
		call_fail(TR_CALL_REQ_NOTIFY_CQ, ret, cq, 0);
	return ret;
}

static void cq_ex_record(struct ibv_cq_ex *cq, struct cq_state *st)
{
	struct tr_rec r = { .type = TR_COMPLETION, .wr_id = cq->wr_id, .obj = (uintptr_t)cq,
			    .result = cq->status, .opcode = st->orig.read_opcode(cq) };
	if (st->wc_flags & IBV_WC_EX_WITH_QP_NUM)
		r.qp_num = st->orig.read_qp_num(cq);
	else
		r.flags |= TR_WCF_QPN_UNKNOWN;
	if (st->wc_flags & IBV_WC_EX_WITH_BYTE_LEN)
		r.length = st->orig.read_byte_len(cq);
	r.aux = st->orig.read_vendor_err(cq);
	put(&r);
}

static int w_start_poll(struct ibv_cq_ex *cq, struct ibv_poll_cq_attr *attr)
{
	struct obj *o = lookup(cq, OK_CQ);
	int ret = o->u.cq.orig.start_poll(cq, attr);
	if (ret == 0)
		cq_ex_record(cq, &o->u.cq);
	else if (ret != ENOENT)
		call_fail(TR_CALL_START_POLL, ret, cq, 0);
	return ret;
}

static int w_next_poll(struct ibv_cq_ex *cq)
{
	struct obj *o = lookup(cq, OK_CQ);
	int ret = o->u.cq.orig.next_poll(cq);
	if (ret == 0)
		cq_ex_record(cq, &o->u.cq);
	else if (ret != ENOENT)
		call_fail(TR_CALL_NEXT_POLL, ret, cq, 0);
	return ret;
}

/* ---------------------------------------------------------------- ibv_qp_ex wr_* builders */

static struct qp_state *qps(struct ibv_qp_ex *qpx)
{
	return lookup(&qpx->qp_base, OK_QP)->u.qp;
}

static void emit_pending(struct qp_state *s)
{
	for (uint32_t i = 0; i < s->npending; i++) {
		struct pending_wr *p = &s->pending[i];
		struct tr_rec r = { .type = TR_POST_SEND, .qp_num = s->qp_num, .wr_id = p->wr_id,
				    .obj = s->chain, .opcode = p->opcode, .length = p->length,
				    .flags = p->flags, .aux = s->index++,
				    .result = (int32_t)p->imm, .aux2 = s->context };
		put(&r);
	}
	s->npending = 0;
}

static void stage_cur(struct qp_state *s)
{
	if (!s->have_cur)
		return;
	if (s->npending == TR_PENDING_MAX)
		emit_pending(s); /* still before wr_complete rings the doorbell */
	s->pending[s->npending++] = s->cur;
	s->have_cur = 0;
}

static struct qp_state *builder(struct ibv_qp_ex *qpx, uint32_t opcode, uint32_t imm)
{
	struct qp_state *s = qps(qpx);
	stage_cur(s);
	s->cur = (struct pending_wr){ .wr_id = qpx->wr_id, .opcode = opcode, .imm = imm,
		.flags = send_flags_of(qpx->wr_flags, s->sig_all) | TR_WRF_WR_API };
	s->have_cur = 1;
	return s;
}

static void b_start(struct ibv_qp_ex *q)
{
	struct qp_state *s = qps(q);
	s->orig.wr_start(q); /* the provider's per-QP critical section starts here */
	s->chain = next_chain();
	s->index = s->npending = s->have_cur = 0;
}

static int b_complete(struct ibv_qp_ex *q)
{
	struct qp_state *s = qps(q);
	stage_cur(s);
	emit_pending(s);
	uint64_t chain = s->chain;
	int ret = s->orig.wr_complete(q);
	if (ret) /* nothing of the batch was posted */
		post_fail(s->qp_num, chain, ret, 0, TR_POSTK_WR_COMPLETE);
	return ret;
}

static void b_abort(struct ibv_qp_ex *q)
{
	struct qp_state *s = qps(q);
	uint64_t chain = s->chain;
	int emitted = s->index > 0;
	s->npending = s->have_cur = 0;
	s->orig.wr_abort(q);
	if (emitted) /* some WRs of the batch were recorded (more than TR_PENDING_MAX) */
		post_fail(s->qp_num, chain, ECANCELED, 0, TR_POSTK_WR_ABORT);
}

static void b_send(struct ibv_qp_ex *q) { builder(q, IBV_WR_SEND, 0)->orig.wr_send(q); }
static void b_send_imm(struct ibv_qp_ex *q, __be32 imm)
{ builder(q, IBV_WR_SEND_WITH_IMM, imm)->orig.wr_send_imm(q, imm); }
static void b_send_inv(struct ibv_qp_ex *q, uint32_t rk)
{ builder(q, IBV_WR_SEND_WITH_INV, 0)->orig.wr_send_inv(q, rk); }
static void b_send_tso(struct ibv_qp_ex *q, void *h, uint16_t hs, uint16_t mss)
{ builder(q, IBV_WR_TSO, 0)->orig.wr_send_tso(q, h, hs, mss); }
static void b_write(struct ibv_qp_ex *q, uint32_t rk, uint64_t ra)
{ builder(q, IBV_WR_RDMA_WRITE, 0)->orig.wr_rdma_write(q, rk, ra); }
static void b_write_imm(struct ibv_qp_ex *q, uint32_t rk, uint64_t ra, __be32 imm)
{ builder(q, IBV_WR_RDMA_WRITE_WITH_IMM, imm)->orig.wr_rdma_write_imm(q, rk, ra, imm); }
static void b_read(struct ibv_qp_ex *q, uint32_t rk, uint64_t ra)
{ builder(q, IBV_WR_RDMA_READ, 0)->orig.wr_rdma_read(q, rk, ra); }
static void b_cas(struct ibv_qp_ex *q, uint32_t rk, uint64_t ra, uint64_t c, uint64_t sw)
{
	struct qp_state *s = builder(q, IBV_WR_ATOMIC_CMP_AND_SWP, 0);
	s->cur.length = 8;
	s->orig.wr_atomic_cmp_swp(q, rk, ra, c, sw);
}
static void b_fadd(struct ibv_qp_ex *q, uint32_t rk, uint64_t ra, uint64_t add)
{
	struct qp_state *s = builder(q, IBV_WR_ATOMIC_FETCH_AND_ADD, 0);
	s->cur.length = 8;
	s->orig.wr_atomic_fetch_add(q, rk, ra, add);
}
static void b_bind_mw(struct ibv_qp_ex *q, struct ibv_mw *mw, uint32_t rk,
		      const struct ibv_mw_bind_info *bi)
{ builder(q, IBV_WR_BIND_MW, 0)->orig.wr_bind_mw(q, mw, rk, bi); }
static void b_local_inv(struct ibv_qp_ex *q, uint32_t rk)
{ builder(q, IBV_WR_LOCAL_INV, 0)->orig.wr_local_inv(q, rk); }
static void b_atomic_write(struct ibv_qp_ex *q, uint32_t rk, uint64_t ra, const void *w)
{
	struct qp_state *s = builder(q, IBV_WR_ATOMIC_WRITE, 0);
	s->cur.length = 8;
	s->orig.wr_atomic_write(q, rk, ra, w);
}

static void b_sge(struct ibv_qp_ex *q, uint32_t lkey, uint64_t addr, uint32_t len)
{
	struct qp_state *s = qps(q);
	s->cur.length = len;
	s->orig.wr_set_sge(q, lkey, addr, len);
}
static void b_sge_list(struct ibv_qp_ex *q, size_t n, const struct ibv_sge *l)
{
	struct qp_state *s = qps(q);
	s->cur.length = 0;
	for (size_t i = 0; i < n; i++)
		s->cur.length += l[i].length;
	s->orig.wr_set_sge_list(q, n, l);
}
static void b_inline(struct ibv_qp_ex *q, void *a, size_t len)
{
	struct qp_state *s = qps(q);
	s->cur.length = (uint32_t)len;
	s->cur.flags |= TR_WRF_INLINE;
	s->orig.wr_set_inline_data(q, a, len);
}
static void b_inline_list(struct ibv_qp_ex *q, size_t n, const struct ibv_data_buf *l)
{
	struct qp_state *s = qps(q);
	s->cur.length = 0;
	for (size_t i = 0; i < n; i++)
		s->cur.length += (uint32_t)l[i].length;
	s->cur.flags |= TR_WRF_INLINE;
	s->orig.wr_set_inline_data_list(q, n, l);
}

#define HOOK(field, fn) do { if (qpx->field) qpx->field = fn; } while (0)

static int follow_qp_ex(struct ibv_qp_ex *qpx, struct qp_state *s)
{
	if (!qpx || !qpx->wr_start || !qpx->wr_complete)
		return 0;
	s->orig = *qpx;
	HOOK(wr_start, b_start); HOOK(wr_complete, b_complete); HOOK(wr_abort, b_abort);
	HOOK(wr_send, b_send); HOOK(wr_send_imm, b_send_imm); HOOK(wr_send_inv, b_send_inv);
	HOOK(wr_send_tso, b_send_tso); HOOK(wr_rdma_write, b_write);
	HOOK(wr_rdma_write_imm, b_write_imm); HOOK(wr_rdma_read, b_read);
	HOOK(wr_atomic_cmp_swp, b_cas); HOOK(wr_atomic_fetch_add, b_fadd);
	HOOK(wr_bind_mw, b_bind_mw); HOOK(wr_local_inv, b_local_inv);
	HOOK(wr_atomic_write, b_atomic_write);
	HOOK(wr_set_sge, b_sge); HOOK(wr_set_sge_list, b_sge_list);
	HOOK(wr_set_inline_data, b_inline); HOOK(wr_set_inline_data_list, b_inline_list);
	return 1;
}

/* ---------------------------------------------------------------- QPs and CQs */

static void qp_created(struct ibv_qp *qp, int sig_all, uint32_t max_send, uint32_t max_recv,
		       int srq, int ex, int wr_api)
{
	struct obj *o = calloc(1, sizeof *o);
	struct qp_state *s = calloc(1, sizeof *s);
	uint32_t flags = (sig_all ? TR_QPF_SQ_SIG_ALL : 0) | (srq ? TR_QPF_SRQ : 0) |
			 (ex ? TR_QPF_CREATED_EX : 0);
	if (o && s) {
		o->key = qp;
		o->kind = OK_QP;
		o->u.qp = s;
		s->qp_num = qp->qp_num;
		s->context = (uintptr_t)qp->context;
		s->sig_all = sig_all;
		if (wr_api && follow_qp_ex(ibv_qp_to_qp_ex(qp), s))
			flags |= TR_QPF_WR_API_TRACED;
		if (insert(o)) { /* table full: the QP's wr_* and sig_all are not followed */
			if (flags & TR_QPF_WR_API_TRACED)
				*ibv_qp_to_qp_ex(qp) = s->orig;
			flags &= ~TR_QPF_WR_API_TRACED;
			free(o);
			free(s);
		}
	} else {
		free(o);
		free(s);
	}
	struct tr_rec r = { .type = TR_QP_CREATE, .qp_num = qp->qp_num, .obj = (uintptr_t)qp,
			    .opcode = qp->qp_type, .length = max_send, .aux = max_recv,
			    .flags = flags, .aux2 = (uintptr_t)qp->context };
	put(&r);
}

struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr)
{
	REAL(ibv_create_qp);
	struct ibv_qp *qp = real_ibv_create_qp(pd, attr);
	if (!qp) {
		call_fail(TR_CALL_CREATE_QP, errno, pd, 0);
		return qp;
	}
	qp_created(qp, attr->sq_sig_all, attr->cap.max_send_wr, attr->cap.max_recv_wr,
		   attr->srq != NULL, 0, 0);
	return qp;
}

static struct ibv_qp *w_create_qp_ex(struct ibv_context *c, struct ibv_qp_init_attr_ex *attr)
{
	struct ctx_state *cs = ctx_of(c);
	struct ibv_qp *qp = cs->create_qp_ex(c, attr);
	if (!qp) {
		call_fail(TR_CALL_CREATE_QP_EX, errno, c, 0);
		return qp;
	}
	int wr_api = (attr->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) && attr->send_ops_flags;
	qp_created(qp, attr->sq_sig_all, attr->cap.max_send_wr, attr->cap.max_recv_wr,
		   attr->srq != NULL, 1, wr_api);
	return qp;
}

int ibv_destroy_qp(struct ibv_qp *qp)
{
	REAL(ibv_destroy_qp);
	uint32_t num = qp->qp_num;
	int ret = real_ibv_destroy_qp(qp);
	struct tr_rec r = { .type = TR_QP_DESTROY, .qp_num = num, .obj = (uintptr_t)qp,
			    .result = ret };
	put(&r);
	if (ret)
		call_fail(TR_CALL_DESTROY_QP, ret, qp, num);
	else
		remove_obj(qp, OK_QP);
	return ret;
}

int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask)
{
	REAL(ibv_modify_qp);
	int ret = real_ibv_modify_qp(qp, attr, mask);
	struct tr_rec r = { .type = TR_QP_MODIFY, .qp_num = qp->qp_num, .obj = (uintptr_t)qp,
			    .opcode = (mask & IBV_QP_STATE) ? attr->qp_state : TR_NO_STATE,
			    .aux = (uint32_t)mask, .result = ret,
			    .aux2 = (mask & IBV_QP_DEST_QPN) ? attr->dest_qp_num : TR_NO_QPN };
	put(&r);
	if (ret)
		call_fail(TR_CALL_MODIFY_QP, ret, qp, qp->qp_num);
	return ret;
}

static void cq_created(void *cq, int cqe, uint32_t flags, struct ibv_context *c)
{
	struct tr_rec r = { .type = TR_CQ_CREATE, .obj = (uintptr_t)cq, .length = (uint32_t)cqe,
			    .flags = flags, .aux2 = (uintptr_t)c };
	put(&r);
}

struct ibv_cq *ibv_create_cq(struct ibv_context *c, int cqe, void *cq_ctx,
			     struct ibv_comp_channel *ch, int vec)
{
	REAL(ibv_create_cq);
	struct ibv_cq *cq = real_ibv_create_cq(c, cqe, cq_ctx, ch, vec);
	if (!cq)
		call_fail(TR_CALL_CREATE_CQ, errno, c, 0);
	else
		cq_created(cq, cq->cqe, 0, c);
	return cq;
}

static struct ibv_cq_ex *w_create_cq_ex(struct ibv_context *c, struct ibv_cq_init_attr_ex *attr)
{
	struct ctx_state *cs = ctx_of(c);
	struct ibv_cq_ex *cq = cs->create_cq_ex(c, attr);
	if (!cq) {
		call_fail(TR_CALL_CREATE_CQ_EX, errno, c, 0);
		return cq;
	}
	uint32_t flags = TR_CQF_EX;
	struct obj *o = calloc(1, sizeof *o);
	if (o && cq->start_poll && cq->next_poll && cq->read_opcode && cq->read_vendor_err) {
		o->key = cq;
		o->kind = OK_CQ;
		o->u.cq.orig = *cq;
		o->u.cq.wc_flags = attr->wc_flags;
		if (insert(o) == 0) {
			cq->start_poll = w_start_poll;
			cq->next_poll = w_next_poll;
			flags |= TR_CQF_EX_TRACED;
			if (!(attr->wc_flags & IBV_WC_EX_WITH_QP_NUM))
				flags |= TR_CQF_EX_NO_QPN;
			o = NULL;
		}
	}
	free(o);
	cq_created(cq, cq->cqe, flags, c);
	return cq;
}

int ibv_destroy_cq(struct ibv_cq *cq)
{
	REAL(ibv_destroy_cq);
	int ret = real_ibv_destroy_cq(cq);
	struct tr_rec r = { .type = TR_CQ_DESTROY, .obj = (uintptr_t)cq, .result = ret };
	put(&r);
	if (ret)
		call_fail(TR_CALL_DESTROY_CQ, ret, cq, 0);
	else
		remove_obj(cq, OK_CQ);
	return ret;
}

/* ---------------------------------------------------------------- devices, events */

struct ibv_context *ibv_open_device(struct ibv_device *dev)
{
	REAL(ibv_open_device);
	struct ibv_context *c = real_ibv_open_device(dev);
	if (!c) {
		call_fail(TR_CALL_OPEN_DEVICE, errno, dev, 0);
		return c;
	}
	struct tr_rec r = { .type = TR_DEV_OPEN, .obj = (uintptr_t)c };
	memcpy((char *)&r + 24, dev->name, strnlen(dev->name, 39));
	put(&r);
	struct obj *o = calloc(1, sizeof *o);
	if (!o || !c->ops.post_send || !c->ops.poll_cq)
		goto untraced;
	o->key = c;
	o->kind = OK_CTX;
	struct ctx_state *s = &o->u.ctx;
	s->post_send = c->ops.post_send;
	s->post_recv = c->ops.post_recv;
	s->post_srq_recv = c->ops.post_srq_recv;
	s->poll_cq = c->ops.poll_cq;
	s->req_notify_cq = c->ops.req_notify_cq;
	struct verbs_context *vc = verbs_get_ctx(c);
	if (vc && vc->sz >= sizeof(*vc) - offsetof(struct verbs_context, create_qp_ex)) {
		s->create_qp_ex = vc->create_qp_ex;
		s->create_cq_ex = vc->create_cq_ex;
	}
	if (insert(o))
		goto untraced;
	c->ops.post_send = w_post_send;
	if (s->post_recv)
		c->ops.post_recv = w_post_recv;
	if (s->post_srq_recv)
		c->ops.post_srq_recv = w_post_srq_recv;
	c->ops.poll_cq = w_poll_cq;
	if (s->req_notify_cq)
		c->ops.req_notify_cq = w_req_notify_cq;
	if (s->create_qp_ex)
		vc->create_qp_ex = w_create_qp_ex;
	if (s->create_cq_ex)
		vc->create_cq_ex = w_create_cq_ex;
	return c;
untraced:
	free(o);
	call_fail(TR_CALL_OPEN_DEVICE, ENOSPC, c, 0); /* opened, but its data path is not traced */
	return c;
}

int ibv_close_device(struct ibv_context *c)
{
	REAL(ibv_close_device);
	int ret = real_ibv_close_device(c);
	struct tr_rec r = { .type = TR_DEV_CLOSE, .obj = (uintptr_t)c, .result = ret };
	put(&r);
	if (ret)
		call_fail(TR_CALL_CLOSE_DEVICE, ret, c, 0);
	else
		remove_obj(c, OK_CTX);
	return ret;
}

int ibv_get_async_event(struct ibv_context *c, struct ibv_async_event *ev)
{
	REAL(ibv_get_async_event);
	int ret = real_ibv_get_async_event(c, ev);
	if (ret) {
		call_fail(TR_CALL_GET_ASYNC_EVENT, errno, c, 0);
		return ret;
	}
	struct tr_rec r = { .type = TR_ASYNC_EVENT, .opcode = ev->event_type };
	switch (ev->event_type) {
	case IBV_EVENT_CQ_ERR:
		r.obj = (uintptr_t)ev->element.cq;
		break;
	case IBV_EVENT_SRQ_ERR: case IBV_EVENT_SRQ_LIMIT_REACHED:
		r.obj = (uintptr_t)ev->element.srq;
		break;
	case IBV_EVENT_PORT_ACTIVE: case IBV_EVENT_PORT_ERR: case IBV_EVENT_LID_CHANGE:
	case IBV_EVENT_PKEY_CHANGE: case IBV_EVENT_SM_CHANGE: case IBV_EVENT_CLIENT_REREGISTER:
	case IBV_EVENT_GID_CHANGE:
		r.aux = (uint32_t)ev->element.port_num;
		break;
	case IBV_EVENT_DEVICE_FATAL:
		r.obj = (uintptr_t)c;
		break;
	case IBV_EVENT_WQ_FATAL:
		r.obj = (uintptr_t)ev->element.wq;
		break;
	default: /* QP events */
		r.obj = (uintptr_t)ev->element.qp;
		r.qp_num = ev->element.qp ? ev->element.qp->qp_num : 0;
	}
	put(&r);
	return ret;
}

/* failures only */
struct ibv_pd *ibv_alloc_pd(struct ibv_context *c)
{
	REAL(ibv_alloc_pd);
	struct ibv_pd *pd = real_ibv_alloc_pd(c);
	if (!pd)
		call_fail(TR_CALL_ALLOC_PD, errno, c, 0);
	return pd;
}

int ibv_dealloc_pd(struct ibv_pd *pd)
{
	REAL(ibv_dealloc_pd);
	int ret = real_ibv_dealloc_pd(pd);
	if (ret)
		call_fail(TR_CALL_DEALLOC_PD, ret, pd, 0);
	return ret;
}

#undef ibv_reg_mr
struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access)
{
	REAL(ibv_reg_mr);
	struct ibv_mr *mr = real_ibv_reg_mr(pd, addr, len, access);
	if (!mr)
		call_fail(TR_CALL_REG_MR, errno, pd, 0);
	return mr;
}

struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t len, uint64_t iova,
				unsigned int access)
{
	REAL(ibv_reg_mr_iova2);
	struct ibv_mr *mr = real_ibv_reg_mr_iova2(pd, addr, len, iova, access);
	if (!mr)
		call_fail(TR_CALL_REG_MR, errno, pd, 0);
	return mr;
}

int ibv_dereg_mr(struct ibv_mr *mr)
{
	REAL(ibv_dereg_mr);
	int ret = real_ibv_dereg_mr(mr);
	if (ret)
		call_fail(TR_CALL_DEREG_MR, ret, mr, 0);
	return ret;
}
