// SPDX-License-Identifier: GPL-2.0
/*
 * rxe_power_fs_keep: keep the test guest's shared file systems out of system sleep.
 *
 * The virtme-ng guest has no disk: its root is virtio-fs and its writable folders are
 * 9p over virtio, both behind PCI virtio transports. Neither survives a system suspend
 * in Linux 6.1: virtio-fs refuses it (virtio_fs_freeze returns -EOPNOTSUPP, so the
 * whole suspend aborts), and 9p has no freeze/restore, so virtio_device_restore resets
 * the device and no virtqueue is set up again (every later 9p request waits forever).
 * A real machine's root disk suspends and resumes; these two cannot.
 *
 * Loaded with devices=NAME[,NAME...] (PCI device names, e.g. 0000:00:02.0, chosen by
 * the harness from /sys/bus/virtio/drivers/{virtiofs,9pnet_virtio}), it marks each
 * device as a "syscore" device (dev_pm_syscore_device): the PM core then skips it in
 * every phase of system suspend and resume (prepare, suspend, late, noirq and back),
 * so it keeps running through the sleep. Every other device sleeps as usual.
 * Unloading the module clears the mark on the devices it marked and nothing else.
 */
#include <linux/device.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/string.h>

#define FS_KEEP_MAX_DEVICES 8

static char *devices;
module_param(devices, charp, 0444);
MODULE_PARM_DESC(devices, "comma-separated PCI device names kept out of system sleep");

static struct device *kept[FS_KEEP_MAX_DEVICES];
static int nkept;

static void fs_keep_release(void)
{
	while (nkept > 0) {
		struct device *dev = kept[--nkept];

		dev_pm_syscore_device(dev, false);
		dev_info(dev, "rxe_power_fs_keep: back in system sleep\n");
		put_device(dev);
	}
}

static int __init fs_keep_init(void)
{
	char *list, *cursor, *name;

	if (!devices || !*devices) {
		pr_err("rxe_power_fs_keep: devices= is empty\n");
		return -EINVAL;
	}
	list = kstrdup(devices, GFP_KERNEL);
	if (!list)
		return -ENOMEM;
	cursor = list;
	while ((name = strsep(&cursor, ",")) != NULL) {
		struct device *dev;

		if (!*name)
			continue;
		if (nkept == FS_KEEP_MAX_DEVICES) {
			pr_err("rxe_power_fs_keep: more than %d devices\n", FS_KEEP_MAX_DEVICES);
			goto fail_inval;
		}
		dev = bus_find_device_by_name(&pci_bus_type, NULL, name); /* holds a ref */
		if (!dev) {
			pr_err("rxe_power_fs_keep: no PCI device %s\n", name);
			kfree(list);
			fs_keep_release();
			return -ENODEV;
		}
		dev_pm_syscore_device(dev, true);
		kept[nkept++] = dev;
		dev_info(dev, "rxe_power_fs_keep: kept out of system sleep\n");
	}
	kfree(list);
	return 0;

fail_inval:
	kfree(list);
	fs_keep_release();
	return -EINVAL;
}

static void __exit fs_keep_exit(void)
{
	fs_keep_release();
}

module_init(fs_keep_init);
module_exit(fs_keep_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("rxe-power test guest: keep virtio-fs/9p transports out of system sleep");
