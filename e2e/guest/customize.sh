#!/bin/sh
# mmdebstrap customize hook: turns the bootstrapped tree ($1) into a bootable cloud-init test image.
# Runs on the host as root; everything here edits files under "$1" only.
set -eu
root="$1"
echo e2e > "$root/etc/hostname"
# The root is the guest's one NVMe namespace, the NoCloud seed its one virtio disk (e2e/vm.py). Without an
# initramfs, virtio_blk is loaded by udev once systemd runs, and cloud-init's local stage may look before the
# seed is there; the network stage (where a NoCloud seed's user data is taken: its dsmode is net) waits for
# it. cloud-init before 24.3 (Debian 12) runs that stage in cloud-init.service, later releases signal it
# from cloud-init-network.service.
printf '/dev/nvme0n1 / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
for unit in cloud-init.service cloud-init-network.service; do
  mkdir -p "$root/etc/systemd/system/$unit.d"
  printf '[Unit]\nWants=dev-vda.device\nAfter=dev-vda.device\n' > "$root/etc/systemd/system/$unit.d/90-e2e-seed.conf"
done
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat > "$root/etc/cloud/cloud.cfg.d/90-e2e.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
network: {config: disabled}
# no disk to grow: keep cloud-init's result free of unrelated errors
resize_rootfs: false
growpart: {mode: 'off'}
CFG
# A grub configuration as a Debian cloud image has one, so the kernel-cmdline option has a file to edit and
# update-grub something to regenerate. The harness boots with -kernel, and for the boot after
# kernel_cmdline it takes the arguments of the first menuentry of the grub.cfg that update-grub wrote.
mkdir -p "$root/etc/default" "$root/boot/grub"
cat > "$root/etc/default/grub" <<'CFG'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0"
GRUB_TERMINAL=console
GRUB_DISABLE_OS_PROBER=true
CFG
# Cloud images ship drop-ins that GRUB reads after /etc/default/grub and that set the command line again
# (Ubuntu's 50-cloudimg-settings.cfg, for one): an edit of /etc/default/grub alone would not reach grub.cfg.
mkdir -p "$root/etc/default/grub.d"
cat > "$root/etc/default/grub.d/50-cloudimg-settings.cfg" <<'CFG'
# Set by the cloud image build: the serial console for the cloud provider's console output.
GRUB_CMDLINE_LINUX="console=ttyS0"
CFG
# Nothing in the test needs these; under software emulation each unit costs a program start (about 0.1 s of
# guest time each, more for the mounts' helpers) and serial noise. None of them orders, loads or reads the
# audit rules, the boot unit or cloud-init's stages: the getty and timers, the pseudo file systems nothing
# mounts on, the kernel-module preloads for devices the guest does not have, utmp, the random seed (the
# guest has virtio-rng), the boot-success flag of a bootloader the harness does not run, cloud-init's hotplug
# socket and ifupdown (the guest has no network; systemd itself brings up the loopback the storm's StatsD
# listener uses).
for unit in serial-getty@ttyS0.service getty@tty1.service getty-static.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer \
    dpkg-db-backup.timer systemd-binfmt.service proc-sys-fs-binfmt_misc.automount sys-kernel-debug.mount \
    sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount dev-hugepages.mount \
    dev-mqueue.mount kmod-static-nodes.service modprobe@configfs.service modprobe@dm_mod.service \
    modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service modprobe@loop.service \
    systemd-pstore.service systemd-random-seed.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service systemd-journal-flush.service grub-common.service \
    cloud-init-hotplugd.socket networking.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# The journal stays in memory (the reporter reads this boot's journal only): no journal files written to
# the disk image under emulation.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$root/etc/systemd/journald.conf.d/90-e2e.conf"
# cloud-init before 24.3 (Debian 12's 22.4) starts Python once per stage, each start 4-8 s under emulation.
# Its config stage runs only cloud-config modules (of ours, runcmd), and no user data the tests boot is
# cloud-config (shell scripts, MIME with shell parts, the Karpenter node config): on those releases the stage
# is left out. From 24.3 (Debian 13) every stage runs in one process (cloud-init-main.service), whose config
# stage waits for cloud-config.service's signal: there it stays.
if [ ! -e "$root/lib/systemd/system/cloud-init-main.service" ] && [ ! -e "$root/usr/lib/systemd/system/cloud-init-main.service" ]; then
  ln -sf /dev/null "$root/etc/systemd/system/cloud-config.service"
fi
# Mark /etc and /var as up to date with /usr, as on an image that has booted once (systemd-update-done
# writes these stamps with /usr's time): without them every fresh overlay counts as an updated /usr and
# starts ldconfig, the journal catalog rebuild and sysusers at each boot (10-13 s under emulation on Debian 13).
touch -r "$root/usr" "$root/etc/.updated" "$root/var/.updated"
