# The guest's init for `cargo xtask vm-test`, run by the static busybox as `sh init [stage2]`.
#
# Stage 1 runs as PID 1 in the initramfs: it loads the modules the initramfs carries (virtio,
# 9p, overlay, virtio_console), mounts the host's root read-only over 9p (tag `hostroot`) under
# a tmpfs overlay, the per-run directory read-write (tag `vxrun`, at /run/vxvm), the kernel's
# own modules at /lib/modules/$(uname -r), and the kernel file systems the tests need (tracefs,
# bpffs, cgroup2, a fresh /run for `ip netns`, a fresh /tmp), then switch_roots into it.
# Stage 2 runs as PID 1 in that root (PID 1 itself must change root: the kernel's own helpers,
# such as request_module's modprobe, use PID 1's root) and runs /run/vxvm/cmd.sh with its
# output on the virtio-serial port `vxvm.out`, writes the status to /run/vxvm/rc and powers off.
# /run/vxvm/started tells the host that the guest booted (a boot that dies before it is retried).
# The guest has no network device: only the namespaces the tests build.

BB=/bin/busybox
log() { echo "vxvm-init: $*"; }
die() { log "FATAL: $*"; $BB poweroff -f; }

if [ "$1" != stage2 ]; then
  $BB --install -s /bin
  export PATH=/bin
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  for m in $(cat /modules.list); do insmod "/modules/$m" || log "insmod $m failed"; done
  # the 9p devices show up asynchronously: wait for both tags (at most ~5 s)
  for i in $(seq 1 100); do
    tags=$(cat /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag 2>/dev/null | tr '\0' ' ')
    case "$tags" in *hostroot*vxrun*|*vxrun*hostroot*) break ;; esac
    sleep 0.05
  done
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower ||
    die "cannot mount the host's root (9p)"
  mount -t tmpfs -o mode=755 tmpfs /upper
  mkdir -p /upper/u /upper/w
  mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
    die "cannot mount the overlay"
  R=/newroot
  mount -t proc proc $R/proc
  mount -t sysfs sysfs $R/sys
  mount -t devtmpfs devtmpfs $R/dev
  mkdir -p $R/dev/pts $R/dev/shm
  mount -t devpts -o ptmxmode=666 devpts $R/dev/pts
  mount -t tmpfs tmpfs $R/dev/shm
  mount -t tmpfs -o mode=755 tmpfs $R/run
  mount -t tmpfs -o mode=1777 tmpfs $R/tmp
  mkdir -p $R/run/vxvm $R/run/vxvm-init $R/run/netns
  mount -t 9p -o trans=virtio,version=9p2000.L,cache=none vxrun $R/run/vxvm ||
    die "cannot mount the run directory (9p)"
  mount -t tracefs tracefs $R/sys/kernel/tracing || log "no tracefs"
  mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
  mount -t bpf bpf $R/sys/fs/bpf || log "no bpffs"
  mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
  # MODDIR and KCONFIG: host paths of the kernel's modules and config
  . $R/run/vxvm/env.sh
  KVER=$(uname -r)
  if [ -n "$MODDIR" ]; then
    mkdir -p "$R/lib/modules/$KVER"
    mount --bind "/lower$MODDIR" "$R/lib/modules/$KVER" || die "cannot bind the modules"
  fi
  if [ -n "$KCONFIG" ]; then
    mkdir -p $R/boot
    cp "/lower$KCONFIG" "$R/boot/config-$KVER"
  fi
  cp $BB $R/run/vxvm-init/busybox
  cp /init $R/run/vxvm-init/init
  exec switch_root $R /run/vxvm-init/busybox sh /run/vxvm-init/init stage2
fi

# ---- stage 2
BB=/run/vxvm-init/busybox
OUT=
for i in $($BB seq 1 100); do
  for p in /sys/class/virtio-ports/*; do
    [ "$($BB cat "$p/name" 2>/dev/null)" = vxvm.out ] && OUT=/dev/${p##*/}
  done
  [ -n "$OUT" ] && [ -e "$OUT" ] && break
  $BB sleep 0.05
done
[ -n "$OUT" ] || die "no virtio-serial port vxvm.out"
$BB hostname vm
$BB ip link set lo up
: > /run/vxvm/started
/bin/sh /run/vxvm/cmd.sh < /dev/null > "$OUT" 2>&1
rc=$?
echo $rc > /run/vxvm/rc
log "command exited with $rc"
$BB sync
$BB poweroff -f
