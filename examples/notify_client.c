/* notify_client: a well-behaved verbs program that speaks the power shim's notify protocol
 * (power/notify.py): it releases its device on suspend_prepare and reopens it on
 * resume_complete, so a transition finds no holder and it loses no request.
 *
 *   notify_client DEV GID_INDEX PEER_DEV PEER_GID_INDEX SECONDS
 *
 * Traffic: 4 KiB SENDs from an RC QP on DEV to one on PEER_DEV (both its own, see
 * loopback.h), at most LB_DEPTH in flight. It releases and reopens both devices.
 * Notices: a Unix socket $RXE_POWER_CLIENTS_DIR/notify_client.<pid>.sock (default
 * directory /run/rxe-power/clients); one JSON line in, one JSON line out per connection.
 *  - suspend_prepare: stop posting, wait (bounded by the notice's deadline_s) until every
 *    request has completed, close the device, answer {"event":"released"};
 *  - resume_complete: reopen DEV as the payload names it (dev, gid_index), answer
 *    {"event":"resumed"}, send again.
 * SECONDS counts traffic time: the time it spends released does not count, so a slow
 * transition cannot end its run while released (it waits at most RESUME_WAIT_S for
 * resume_complete, then exits 1). An error completion ends the run with exit status 1 (a
 * clean run has none). At the end: drain, close, print what it did, exit 0.
 */
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "loopback.h"

#define DRAIN_SHARE 0.8 /* of the notice's deadline_s, for draining in-flight requests */
#define RESUME_WAIT_S 60.0 /* the longest time it stays released, waiting for resume_complete */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* the value of "key": in a JSON line: a number (as text) or a string's characters */
static int json_field(const char *line, const char *key, char *out, size_t size)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\":", key);
	const char *p = strstr(line, pat);
	if (!p)
		return -1;
	p += strlen(pat);
	while (*p == ' ')
		p++;
	size_t n = 0;
	if (*p == '"') {
		for (p++; *p && *p != '"' && n + 1 < size; p++)
			out[n++] = *p;
	} else {
		for (; *p && (*p == '-' || *p == '.' || (*p >= '0' && *p <= '9')) && n + 1 < size; p++)
			out[n++] = *p;
	}
	out[n] = 0;
	return n ? 0 : -1;
}

static struct lb lb;
static int open_ = 0, outstanding = 0, errors = 0;
static uint64_t sent = 0, done = 0;
static double end_s = 0, released_at_s = 0; /* traffic ends at end_s; released time does not count */

static void poll_some(void)
{
	struct ibv_wc wc[16];
	for (int side = 0; side < 2; side++) {
		int n = ibv_poll_cq(lb.s[side].cq, 16, wc);
		if (n < 0) {
			fprintf(stderr, "notify_client: ibv_poll_cq failed: %d\n", n);
			exit(1);
		}
		for (int i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS) {
				fprintf(stderr, "notify_client: completion wr_id %llu status %s\n",
					(unsigned long long)wc[i].wr_id,
					ibv_wc_status_str(wc[i].status));
				errors++;
			}
			if (side == 1) {
				if (wc[i].status == IBV_WC_SUCCESS && lb_post_recv(&lb, wc[i].wr_id))
					errors++;
			} else {
				outstanding--;
				done++;
			}
		}
	}
}

/* every send completed, and the receive side caught up, within the bound */
static void drain(double bound_s)
{
	if (!open_) /* released: nothing of the device is left to poll */
		return;
	double end = now_s() + bound_s;
	while (open_ && outstanding > 0 && now_s() < end)
		poll_some();
	if (outstanding > 0)
		fprintf(stderr, "notify_client: %d sends still in flight after %.2f s\n",
			outstanding, bound_s);
	/* the last receives' completions: they follow their sends' completions at once */
	for (int i = 0; i < 100; i++)
		poll_some();
}

static const char *peer_dev;
static int peer_gid;

static int reopen(const char *dev, int gid_index)
{
	if (lb_open(&lb, dev, gid_index, peer_dev, peer_gid)) {
		lb_close(&lb);
		return -1;
	}
	for (int i = 0; i < LB_DEPTH; i++)
		if (lb_post_recv(&lb, (uint64_t)i))
			return -1;
	open_ = 1;
	return 0;
}

static void answer(int fd, const char *id, const char *event)
{
	char line[128];
	int n = snprintf(line, sizeof line, "{\"v\":1,\"id\":%s,\"event\":\"%s\",\"payload\":{}}\n",
			 id, event);
	if (write(fd, line, (size_t)n) != n)
		fprintf(stderr, "notify_client: answering %s failed: %s\n", event, strerror(errno));
}

static void notice(int fd, const char *dev, int gid_index)
{
	char line[8192], id[32], event[64], val[64];
	size_t n = 0;
	while (n + 1 < sizeof line) { /* one line */
		ssize_t r = read(fd, line + n, sizeof line - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		if (memchr(line, '\n', n))
			break;
	}
	line[n] = 0;
	if (json_field(line, "id", id, sizeof id) || json_field(line, "event", event, sizeof event))
		return;
	if (!strcmp(event, "suspend_prepare")) {
		double deadline = json_field(line, "deadline_s", val, sizeof val) ? 1.0 : atof(val);
		drain(deadline * DRAIN_SHARE);
		lb_close(&lb);
		open_ = 0;
		released_at_s = now_s();
		answer(fd, id, "released");
	} else if (!strcmp(event, "resume_complete")) {
		char newdev[64];
		int gi = json_field(line, "gid_index", val, sizeof val) ? gid_index : atoi(val);
		if (json_field(line, "dev", newdev, sizeof newdev))
			snprintf(newdev, sizeof newdev, "%s", dev);
		if (reopen(newdev, gi) == 0) {
			end_s += now_s() - released_at_s;
			answer(fd, id, "resumed");
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s DEV GID_INDEX PEER_DEV PEER_GID_INDEX SECONDS\n", argv[0]);
		return 2;
	}
	peer_dev = argv[3];
	peer_gid = atoi(argv[4]);
	signal(SIGPIPE, SIG_IGN);
	const char *dir = getenv("RXE_POWER_CLIENTS_DIR");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int len = snprintf(sa.sun_path, sizeof sa.sun_path, "%s/notify_client.%d.sock",
			   dir && *dir ? dir : "/run/rxe-power/clients", (int)getpid());
	if (len >= (int)sizeof sa.sun_path) {
		fprintf(stderr, "notify_client: socket path too long; fix: a shorter "
			"RXE_POWER_CLIENTS_DIR\n");
		return 2;
	}
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 4)) {
		fprintf(stderr, "notify_client: cannot listen on %s: %s; fix: create the "
			"directory (mode 0700)\n", sa.sun_path, strerror(errno));
		return 2;
	}
	if (reopen(argv[1], atoi(argv[2])))
		return 1;
	end_s = now_s() + atof(argv[5]);
	while (!errors) {
		if (open_ ? now_s() >= end_s : now_s() >= released_at_s + RESUME_WAIT_S)
			break;
		struct pollfd p = { .fd = ls, .events = POLLIN };
		if (poll(&p, 1, open_ ? 0 : 10) > 0) {
			int fd = accept(ls, NULL, NULL);
			if (fd >= 0) {
				notice(fd, argv[1], atoi(argv[2]));
				close(fd);
			}
			continue;
		}
		if (!open_)
			continue;
		if (outstanding < LB_DEPTH) {
			int err = lb_post_send(&lb, sent);
			if (err) {
				fprintf(stderr, "notify_client: ibv_post_send failed: errno %d (%s)\n",
					err, strerror(err));
				errors++;
				break;
			}
			sent++;
			outstanding++;
		}
		poll_some();
		usleep(2000);
	}
	if (!open_) {
		fprintf(stderr, "notify_client: released, and no resume_complete within %.0f s\n",
			RESUME_WAIT_S);
		errors++;
	}
	drain(2.0);
	unlink(sa.sun_path);
	printf("notify_client: %llu sends, %llu completed, %d errors\n",
	       (unsigned long long)sent, (unsigned long long)done, errors);
	if (open_)
		lb_close(&lb);
	return errors ? 1 : 0;
}
