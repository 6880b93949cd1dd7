# Shared parts of the VM scripts (esp-vm, ims-vm), sourced, not run: the Debian tools, Debian's
# cloud kernel (which has ESP, unlike the build machines' kernel) fetched as a .deb and cached,
# a base initramfs (busybox, the ESP/veth modules, iproute2 as ip2) and the QEMU boot under
# software emulation. See ../../../shared/notes/kernel-ipsec.md for why each step is there.
#
# The caller sets `work` (the cache folder, normally target/vm) before calling these.
# Functions:
#   vm_tools            install missing Debian packages (qemu-system-x86, busybox-static, kmod, cpio)
#   vm_kernel           fetch/unpack the kernel once; sets kver, kdir, vmlinuz
#   vm_base_initramfs D fill folder D with busybox (+ links), /sbin/modprobe, modules, ip2
#   vm_pack D OUT       D as a gzipped newc cpio archive at OUT
#   vm_boot INITRD      boot it (serial console on stdout); VM_TIMEOUT (s, default 300),
#                       VM_MEM (MiB, default 1024), VM_SMP (default 1), VM_CPU (QEMU -cpu model,
#                       default QEMU's own)

vm_tools() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
  # Not `grep -q`: it stops reading, busybox gets SIGPIPE, and with pipefail the check fails.
  { [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x modprobe >/dev/null; } || need+=(busybox-static)
  command -v depmod >/dev/null 2>&1 || need+=(kmod)
  command -v cpio >/dev/null 2>&1 || need+=(cpio)
  if [ ${#need[@]} -gt 0 ]; then
    echo "vm: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# Debian's cloud image, fetched as a .deb and unpacked (never installed). Under a lock: two
# VM tests may start at once (nextest runs test binaries in parallel).
vm_kernel() {
  mkdir -p "$work"
  (
    flock 9
    if [ ! -f "$work/kver" ]; then
      local pkg
      pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
      if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
      fi
      rm -rf "$work/kernel" "$work/deb" && mkdir -p "$work/deb"
      (cd "$work/deb" && apt-get download "$pkg" >/dev/null 2>&1)
      dpkg -x "$work"/deb/*.deb "$work/kernel"
      echo "${pkg#linux-image-}" > "$work/kver.tmp" && mv "$work/kver.tmp" "$work/kver"
    fi
  ) 9>"$work/.kernel.lock"
  kver=$(cat "$work/kver")
  kdir="$work/kernel/lib/modules/$kver"
  vmlinuz="$work/kernel/boot/vmlinuz-$kver"
}

# busybox with a link for every applet (busybox's own ip has no xfrm/netns: iproute2 comes in
# as ip2 with the libraries ldd lists), /sbin/modprobe (the kernel autoloads crypto templates
# through it), and the modules ESP and veth need, with a fresh modules.dep.
vm_base_initramfs() {
  local ird=$1 a lib ipbin
  rm -rf "$ird" && mkdir -p "$ird"/{bin,sbin,proc,sys,run,dev,tmp,etc,lib/modules/"$kver"/kernel/drivers/net}
  cp /bin/busybox "$ird/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$ird/bin/$a"
  done
  ln -sf ../bin/busybox "$ird/sbin/modprobe"
  cp -r "$kdir"/kernel/{net,crypto,lib} "$ird/lib/modules/$kver/kernel/"
  [ -d "$kdir/kernel/arch" ] && cp -r "$kdir/kernel/arch" "$ird/lib/modules/$kver/kernel/"
  cp "$kdir"/kernel/drivers/net/veth.ko* "$ird/lib/modules/$kver/kernel/drivers/net/"
  cp "$kdir"/modules.{order,builtin,builtin.modinfo} "$ird/lib/modules/$kver/" 2>/dev/null || true
  depmod -b "$ird" "$kver"
  # Names iproute2 and tcpdump look up: protocols (ip xfrm ... proto udp), the root user
  # (tcpdump -Z root).
  cp /etc/protocols "$ird/etc/protocols"
  echo 'root:x:0:0:root:/:/bin/sh' > "$ird/etc/passwd"
  echo 'root:x:0:' > "$ird/etc/group"
  vm_add_dynamic "$ird" "$(command -v ip)" ip2
}

# vm_add_dynamic D PROGRAM NAME: a dynamically linked host program as /bin/NAME in the
# initramfs folder D, with the libraries ldd lists.
vm_add_dynamic() {
  local ird=$1 bin=$2 name=$3 lib
  cp "$bin" "$ird/bin/$name"
  for lib in $(ldd "$bin" | awk '/=>/{print $3} /ld-linux/{print $1}'); do
    mkdir -p "$ird$(dirname "$lib")"; cp -L "$lib" "$ird$lib"
  done
}

vm_pack() {
  (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2"
}

# Software emulation: KVM is not usable on these machines. The VM's /init ends with
# `poweroff -f` (with -no-reboot and panic=-1 a crash also ends QEMU).
vm_boot() {
  timeout "${VM_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg ${VM_CPU:+-cpu "$VM_CPU"} -m "${VM_MEM:-1024}" \
    -smp "${VM_SMP:-1}" -nographic -no-reboot \
    -kernel "$vmlinuz" -initrd "$1" \
    -append "console=ttyS0 quiet panic=-1" </dev/null
}
