#!/bin/sh
# mmdebstrap customize hook: turns the bootstrapped tree ($1) into a bootable cloud-init test image.
# Runs on the host as root; everything here edits files under "$1" only.
set -eu
root="$1"
echo e2e > "$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
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
# Nothing in the test needs these; under software emulation they only cost boot time and serial noise.
for unit in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer dpkg-db-backup.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
