#!/usr/bin/python3
"""Apply rxe-power's disassociate change to a copy of drivers/infiniband/sw/rxe.

    rxe_disassociate_patch.py RXE_DIR [--variant full|pm|empty-callback]

Called by ci/build-rxe-disassociate.sh on sources extracted from the kernel's own
distribution tarball (we never commit kernel source). Every edit is anchored on text
that must occur exactly once; a kernel whose rxe differs fails here, naming the file
and the anchor, instead of building something we did not mean.

Why: without `disassociate_ucontext` in rxe's ib_device_ops, ib_uverbs_remove_one()
(drivers/infiniband/core/uverbs_main.c) waits for every uverbs file of the device to
be closed, so `rdma link delete rxe0` blocks while any process holds rxe0. With the
callback, ib_uverbs destroys the user's objects at once, queues IB_EVENT_DEVICE_FATAL
on each holder's async fd and fails its later commands with EIO: what mlx5, mlx4,
irdma and hns do when their HCA goes (a real suspend unregisters the ib_device).
Upstream: the rdma-next series of July 2026 (Jiri Pirko, "RDMA/rxe: Implement
disassociate_ucontext callback", patch 12/13) adds the callback; its review found the
problem the `full` variant also fixes (below).

An empty callback alone is not enough ("empty-callback" variant, kept only to show
that): rxe maps its CQ/QP/SRQ rings into userspace with its own rxe_mmap(), not
rdma_user_mmap_io(), so ib_uverbs does not zap those VMAs on disassociate. The ring
memory itself is safe (each VMA holds a reference on its rxe_mmap_info, so the
vmalloc buffer lives until munmap). But
  1. rxe_mmap_release(), run by the last munmap, reads ip->context->device to take
     rxe->pending_lock: after disassociate that ib_ucontext is freed and the rxe
     device may be too (a use-after-free on every clean close of a disassociated
     holder);
  2. with the callback, an open uverbs file no longer pins rdma_rxe, so the module
     can be unloaded while a VMA still points at rxe_vm_ops (a jump into freed text
     at munmap or exit).
The `full` variant therefore also (1) touches the device only for an entry still on
the pending list (one never mmap'd, which is released when its queue is destroyed,
before the ucontext goes), and (2) holds a module reference per live rxe VMA.

The `pm` variant (the default build, what --removal disassociate loads) is `full` plus
the mlx5 order of a system sleep: see PM_CODE below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CALLBACK = """\
/*
 * rxe-power: disassociate_ucontext. Present, ib_uverbs_remove_one() disassociates
 * the user contexts when the device is unregistered (holders get
 * IB_EVENT_DEVICE_FATAL, later commands fail with EIO) instead of waiting for every
 * uverbs file to close; the same as mlx5/mlx4/irdma/hns. Nothing to do here: rxe
 * has no doorbells or BARs mapped to userspace, and its queue rings are handled in
 * rxe_mmap.c. Upstream: rdma-next, July 2026, "RDMA/rxe: Implement
 * disassociate_ucontext callback".
 */
static void rxe_disassociate_ucontext(struct ib_ucontext *ibuc)
{
}

static const struct ib_device_ops rxe_dev_ops = {
"""

# (file, anchor, replacement, variants it belongs to)
EDITS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("rxe_verbs.c", "static const struct ib_device_ops rxe_dev_ops = {\n", CALLBACK,
     ("full", "pm", "empty-callback")),
    ("rxe_verbs.c", "\t.alloc_ucontext = rxe_alloc_ucontext,\n",
     "\t.alloc_ucontext = rxe_alloc_ucontext,\n"
     "\t.disassociate_ucontext = rxe_disassociate_ucontext,\n",
     ("full", "pm", "empty-callback")),
    ("rxe_mmap.c",
     "\tstruct rxe_dev *rxe = to_rdev(ip->context->device);\n\n"
     "\tspin_lock_bh(&rxe->pending_lock);\n\n"
     "\tif (!list_empty(&ip->pending_mmaps))\n"
     "\t\tlist_del(&ip->pending_mmaps);\n\n"
     "\tspin_unlock_bh(&rxe->pending_lock);\n",
     "\t/*\n"
     "\t * rxe-power: a mapped entry left the pending list in rxe_mmap() and is never\n"
     "\t * put back; its last reference may be dropped by munmap after disassociate\n"
     "\t * freed ip->context and the rxe device. Only an entry still pending (never\n"
     "\t * mapped: released when its queue is destroyed, while both are alive) needs\n"
     "\t * the device's lock.\n"
     "\t */\n"
     "\tif (!list_empty(&ip->pending_mmaps)) {\n"
     "\t\tstruct rxe_dev *rxe = to_rdev(ip->context->device);\n\n"
     "\t\tspin_lock_bh(&rxe->pending_lock);\n"
     "\t\tlist_del(&ip->pending_mmaps);\n"
     "\t\tspin_unlock_bh(&rxe->pending_lock);\n"
     "\t}\n",
     ("full", "pm")),
    ("rxe_mmap.c",
     "\tstruct rxe_mmap_info *ip = vma->vm_private_data;\n\n\tkref_get(&ip->ref);\n}\n",
     "\tstruct rxe_mmap_info *ip = vma->vm_private_data;\n\n\tkref_get(&ip->ref);\n"
     "\t__module_get(THIS_MODULE);\t/* rxe-power: see rxe_mmap() */\n}\n",
     ("full", "pm")),
    ("rxe_mmap.c",
     "\tkref_put(&ip->ref, rxe_mmap_release);\n}\n\nstatic const struct vm_operations_struct",
     "\tkref_put(&ip->ref, rxe_mmap_release);\n"
     "\tmodule_put(THIS_MODULE);\t/* rxe-power: see rxe_mmap() */\n}\n\n"
     "static const struct vm_operations_struct",
     ("full", "pm")),
    ("rxe_mmap.c",
     "\t\tpr_err(\"err %d from remap_vmalloc_range\\n\", ret);\n\t\tgoto done;\n\t}\n\ndone:\n",
     "\t\tpr_err(\"err %d from remap_vmalloc_range\\n\", ret);\n\t\tgoto done;\n\t}\n"
     "\t/*\n"
     "\t * rxe-power: with disassociate_ucontext an open uverbs file no longer pins\n"
     "\t * this module, but this VMA's vm_ops point into it: each live VMA holds a\n"
     "\t * module reference (rxe_vma_open/rxe_vma_close keep the count).\n"
     "\t */\n"
     "\t__module_get(THIS_MODULE);\n\ndone:\n",
     ("full", "pm")),
]

PM_CODE = """\
/*
 * rxe-power (variant "pm"): the mlx5 order of a system sleep.
 *
 * A real HCA's PCI suspend unloads the device (mlx5: mlx5_suspend -> mlx5_unload_one):
 * its ib_device is unregistered in the device-suspend phase, after user space and the
 * freezable kernel threads are frozen, so every ib_client's remove() (nvme-rdma,
 * rdma_cm, ib_uverbs: holders disassociated, IB_EVENT_DEVICE_FATAL) runs inside the
 * suspend; its resume registers a new ib_device. rxe sits on a netdev and has no device
 * of its own for the PM core to call, so this variant registers one platform device,
 * "rxe_power_pm", whose system-sleep callbacks do the same for the rxe devices named in
 * the writable parameter pm_unregister (comma-separated ib_device names; empty, the
 * default, leaves every device alone and the callbacks do nothing):
 *   suspend: each named rxe ib_device is unregistered as `rdma link delete` does
 *            (ib_unregister_device_and_put, as nldev_dellink), after recording what
 *            `rdma link add` needs to make it again: its name and its netdev (held);
 *   resume:  each is added again as `rdma link add NAME type rxe netdev NDEV` does
 *            (rxe_newlink, as nldev_newlink calls it), then the netdev is let go.
 * The platform device is registered when the module loads, before any rxe device and the
 * uverbs/infiniband devices that come with it, so the PM core (which suspends in the
 * reverse order of registration and resumes in that order) calls it after theirs (they
 * have no callbacks) and before any earlier device's, such as a NIC's registered at boot.
 * Each step is logged ("rxe_power_pm ...") so the kernel log shows where in the sleep it
 * ran. Needs disassociate_ucontext (above): without it ib_uverbs_remove_one would wait
 * for frozen processes to close their files, and the suspend would never end.
 */
#define RXE_PM_MAX_DEVS 8

struct rxe_pm_saved {
	struct net_device *ndev;	/* held from suspend to resume */
	char name[IB_DEVICE_NAME_MAX];
};

static char *pm_unregister;
module_param(pm_unregister, charp, 0644);
MODULE_PARM_DESC(pm_unregister, "rxe-power: ib_devices (comma-separated) unregistered at "
		 "system suspend and added again at resume; empty: none");

static struct rxe_pm_saved rxe_pm_saved[RXE_PM_MAX_DEVS];
static int rxe_pm_nsaved;
static struct platform_device *rxe_pm_pdev;

/* is `name` one of the names in `list` (separated by commas or newlines: `echo` adds one)? */
static bool rxe_pm_listed(const char *list, const char *name)
{
	size_t len = strlen(name);

	while (*list) {
		size_t item = strcspn(list, ",\\n");

		if (item == len && !strncmp(list, name, len))
			return true;
		list += item;
		if (*list)
			list++;
	}
	return false;
}

static int rxe_pm_suspend(struct device *dev)
{
	struct ib_device *ibdev[RXE_PM_MAX_DEVS];
	char names[256] = "";
	struct net_device *ndev;
	int n = 0, i;

	kernel_param_lock(THIS_MODULE);
	if (pm_unregister)
		strscpy(names, pm_unregister, sizeof(names));
	kernel_param_unlock(THIS_MODULE);
	if (!names[0])
		return 0;
	rtnl_lock();
	for_each_netdev(&init_net, ndev) {
		struct rxe_dev *rxe = rxe_get_dev_from_net(ndev);	/* holds a reference */

		if (!rxe)
			continue;
		if (!rxe_pm_listed(names, dev_name(&rxe->ib_dev.dev))) {
			ib_device_put(&rxe->ib_dev);
			continue;
		}
		if (n == RXE_PM_MAX_DEVS) {
			dev_warn(dev, "suspend: more than %d rxe devices, %s stays\\n",
				 RXE_PM_MAX_DEVS, dev_name(&rxe->ib_dev.dev));
			ib_device_put(&rxe->ib_dev);
			continue;
		}
		dev_hold(ndev);
		rxe_pm_saved[n].ndev = ndev;
		strscpy(rxe_pm_saved[n].name, dev_name(&rxe->ib_dev.dev), IB_DEVICE_NAME_MAX);
		ibdev[n++] = &rxe->ib_dev;
	}
	rtnl_unlock();
	for (i = 0; i < n; i++) {
		ktime_t t0 = ktime_get();

		dev_info(dev, "suspend: unregistering %s (netdev %s)\\n",
			 rxe_pm_saved[i].name, rxe_pm_saved[i].ndev->name);
		ib_unregister_device_and_put(ibdev[i]);	/* frees the rxe device */
		dev_info(dev, "suspend: unregistered %s in %lld us\\n",
			 rxe_pm_saved[i].name, ktime_us_delta(ktime_get(), t0));
	}
	rxe_pm_nsaved = n;
	return 0;
}

static int rxe_pm_resume(struct device *dev)
{
	int i;

	for (i = 0; i < rxe_pm_nsaved; i++) {
		struct rxe_pm_saved *s = &rxe_pm_saved[i];
		ktime_t t0 = ktime_get();
		int err = rxe_newlink(s->name, s->ndev);

		/* a failure is logged, not returned: the PM core would only log it too */
		if (err)
			dev_err(dev, "resume: cannot add %s on %s: error %d\\n",
				s->name, s->ndev->name, err);
		else
			dev_info(dev, "resume: registered %s on %s in %lld us\\n",
				 s->name, s->ndev->name, ktime_us_delta(ktime_get(), t0));
		dev_put(s->ndev);
		s->ndev = NULL;
	}
	rxe_pm_nsaved = 0;
	return 0;
}

static const struct dev_pm_ops rxe_pm_ops = {
	SET_SYSTEM_SLEEP_PM_OPS(rxe_pm_suspend, rxe_pm_resume)
};

static struct platform_driver rxe_pm_driver = {
	.driver = { .name = "rxe_power_pm", .pm = &rxe_pm_ops },
};

static int rxe_pm_init(void)
{
	int err = platform_driver_register(&rxe_pm_driver);

	if (err)
		return err;
	rxe_pm_pdev = platform_device_register_simple("rxe_power_pm", PLATFORM_DEVID_NONE,
						      NULL, 0);
	if (IS_ERR(rxe_pm_pdev)) {
		platform_driver_unregister(&rxe_pm_driver);
		return PTR_ERR(rxe_pm_pdev);
	}
	return 0;
}

static void rxe_pm_exit(void)
{
	platform_device_unregister(rxe_pm_pdev);
	platform_driver_unregister(&rxe_pm_driver);
}

static struct rdma_link_ops rxe_link_ops = {
"""

PM_EDITS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("rxe.c", "#include <net/addrconf.h>\n",
     "#include <net/addrconf.h>\n#include <linux/platform_device.h>\n"
     "#include <linux/rtnetlink.h>\t/* rxe-power: PM_CODE */\n", ("pm",)),
    ("rxe.c", "static struct rdma_link_ops rxe_link_ops = {\n", PM_CODE, ("pm",)),
    ("rxe.c", "\trdma_link_register(&rxe_link_ops);\n",
     "\terr = rxe_pm_init();\t/* rxe-power: before any rxe device exists */\n"
     "\tif (err) {\n\t\trxe_net_exit();\n\t\treturn err;\n\t}\n"
     "\trdma_link_register(&rxe_link_ops);\n", ("pm",)),
    ("rxe.c", "\trxe_net_exit();\n\n\tpr_info(\"unloaded\\n\");\n",
     "\trxe_net_exit();\n\trxe_pm_exit();\t/* rxe-power */\n\n\tpr_info(\"unloaded\\n\");\n",
     ("pm",)),
]

MARK = "rxe-power: disassociate"
# What /sys/module/rdma_rxe/version says for our build (harness/system/rxe_module.py reads
# it); MODULE_VERSION also gives the module a srcversion, which stock rxe has not.
VERSION_PREFIX = "rxe-power-disassociate"


def apply(rxe_dir: Path, variant: str) -> list[str]:
    """Apply the edits of `variant` in place; return one line per edit. Raises
    SystemExit with the file and anchor when an anchor is missing or not unique."""
    done = []
    version_edit = ("rxe.c", 'MODULE_LICENSE("Dual BSD/GPL");\n',
                    'MODULE_LICENSE("Dual BSD/GPL");\n'
                    f'MODULE_VERSION("{VERSION_PREFIX}-{variant}");\n', (variant,))
    for name, anchor, replacement, variants in [*EDITS, *PM_EDITS, version_edit]:
        if variant not in variants:
            continue
        path = rxe_dir / name
        try:
            text = path.read_text()
        except OSError as exc:
            raise SystemExit(f"rxe_disassociate_patch: error: cannot read {path}: "
                             f"[errno {exc.errno}] {exc.strerror}; fix: extract "
                             "drivers/infiniband/sw/rxe from the kernel's source tarball "
                             "first") from exc
        count = text.count(anchor)
        if count != 1:
            raise SystemExit(
                f"rxe_disassociate_patch: error: {path}: the anchor occurs {count} times "
                f"(want exactly 1):\n{anchor}\nfix: this kernel's rxe differs from 6.1's; "
                "adapt EDITS in ci/rxe_disassociate_patch.py to it (or use --removal block)")
        path.write_text(text.replace(anchor, replacement))
        done.append(f"{name}: {anchor.strip().splitlines()[0][:60]}")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rxe_dir", type=Path)
    ap.add_argument("--variant", choices=["full", "pm", "empty-callback"], default="full")
    args = ap.parse_args(argv)
    if MARK in (args.rxe_dir / "rxe_verbs.c").read_text(errors="replace"):
        raise SystemExit(f"rxe_disassociate_patch: error: {args.rxe_dir} is already patched; "
                         "fix: start from a fresh extract")
    for line in apply(args.rxe_dir, args.variant):
        print(f"rxe_disassociate_patch: applied {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
