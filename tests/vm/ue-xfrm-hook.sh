#!/bin/sh
# The scripted UE's SAs, set up with iproute2's `ip xfrm` (as ip2 in the VM) from the values of
# the 401: an implementation independent of ims-xfrm/ims-ipsec, written from TS 33.203 §7.1
# and Annex I directly. ims-ue runs it (`--ipsec-hook`) as `ue-xfrm-hook add|del` with
# IMS_UE_IP, IMS_PCSCF_IP, IMS_PORT_UC/US/PC/PS, IMS_SPI_UC/US/PC/PS, IMS_ALG, IMS_EALG, IMS_CK,
# IMS_IK in the environment.
#
# UE side of the four SAs (SPI = the receiver's):
#   1 UE:port_uc -> P:port_ps  spi_ps  out      2 P:port_pc -> UE:port_us  spi_us  in
#   3 P:port_ps -> UE:port_uc  spi_uc  in       4 UE:port_us -> P:port_pc  spi_pc  out
set -eu
IP=${IP2:-ip2}
ue=$IMS_UE_IP p=$IMS_PCSCF_IP
# Annex I: IK_ESP = IK (hmac-md5-96) or IK || 32 zero bits (hmac-sha-1-96); CK_ESP = CK
# (aes-cbc), CK1 || CK2 || CK1 (des-ede3-cbc, CK = CK1 || CK2), nothing (null).
case $IMS_ALG in
  hmac-sha-1-96) auth="hmac(sha1)" akey="0x${IMS_IK}00000000" ;;
  hmac-md5-96) auth="hmac(md5)" akey="0x${IMS_IK}" ;;
  *) echo "unknown alg $IMS_ALG" >&2; exit 2 ;;
esac
ck1=$(echo "$IMS_CK" | cut -c1-16)
case $IMS_EALG in
  aes-cbc) enc="cbc(aes)" ekey="0x${IMS_CK}" ;;
  des-ede3-cbc) enc="cbc(des3_ede)" ekey="0x${IMS_CK}${ck1}" ;;
  null) enc="ecb(cipher_null)" ekey="" ;;
  *) echo "unknown ealg $IMS_EALG" >&2; exit 2 ;;
esac
base=$(( (IMS_SPI_UC % 100000) * 4 + 100 ))
# sa N SRC SPORT DST DPORT SPI DIR
sa() {
  n=$1 src=$2 sport=$3 dst=$4 dport=$5 spi=$6 dir=$7
  reqid=$((base + n))
  if [ "$verb" = add ]; then
    $IP xfrm state add src "$src" dst "$dst" proto esp spi "$spi" reqid "$reqid" mode transport \
      replay-window 32 auth-trunc "$auth" "$akey" 96 enc "$enc" "$ekey"
    $IP xfrm policy add src "$src" dst "$dst" proto udp sport "$sport" dport "$dport" dir "$dir" \
      tmpl src "$src" dst "$dst" proto esp reqid "$reqid" mode transport
  else
    $IP xfrm policy delete src "$src" dst "$dst" proto udp sport "$sport" dport "$dport" dir "$dir" || rc=1
    $IP xfrm state delete src "$src" dst "$dst" proto esp spi "$spi" || rc=1
  fi
}
verb=$1 rc=0
case $verb in add | del) ;; *) echo "usage: $0 add|del" >&2; exit 2 ;; esac
# A failed add takes back what it added.
if [ "$verb" = add ]; then trap '[ $? = 0 ] || { verb=del; set +e; all >/dev/null 2>&1; exit 1; }' EXIT; fi
all() {
sa 1 "$ue" "$IMS_PORT_UC" "$p" "$IMS_PORT_PS" "$IMS_SPI_PS" out
sa 2 "$p" "$IMS_PORT_PC" "$ue" "$IMS_PORT_US" "$IMS_SPI_US" in
sa 3 "$p" "$IMS_PORT_PS" "$ue" "$IMS_PORT_UC" "$IMS_SPI_UC" in
sa 4 "$ue" "$IMS_PORT_US" "$p" "$IMS_PORT_PC" "$IMS_SPI_PC" out
}
all
exit $rc
