#!/bin/sh
# The whole IMS chain inside the ESP-capable VM: the scenario ims-vm's /init runs (as /scenario,
# busybox sh, the static binaries in /bin, iproute2 as ip2). Prints to the serial console:
#   VM-STEP <name>: ok (<uptime>s) | VM-STEP <name>: FAIL <why>
#   VM-PCSCF-IPSEC: <the P-CSCF's log line about IPsec>
#   VM-UE-<label>: <each line ims-ue printed>
#   VM-SAS-<label>: core=<states>/<policies> ue=<states>/<policies> while a UE is registered
#     through IPsec, VM-SAS-AFTER-<label>: the same after it deregistered
#   VM-ESP-<label>: core=<packets> ue=<packets>, the ESP packets the kernel counted on the SAs
#   VM-CAPTURE: esp=<n> clear-protected=<n> clear-5060=<n>, packets of the veth capture
#   VM-SAS-50 / VM-50-UES: 50 UEs registering through IPsec at once
#   VM-XFRM-<ns> ...: the xfrm states and policies left, VM-XFRM-LEFT-<NS>: <states> <policies>
#   VM-RESULT: PASS | VM-RESULT: FAIL (<n> failed steps), then every daemon's log on failure
#
#   ue   10.0.0.1, fd00::1 ── veth ── core 10.0.0.2, fd00::2   P-CSCF pcscf1.vims.net
#                                          lo 10.0.1.20          I-CSCF icscf1.hims.net
#                                             10.0.1.30          S-CSCF scscf1.hims.net
#                                             10.0.1.40          HSS hss1.hims.net (SQLite in /tmp)
#                                             10.0.1.50          ims-dns (port 53)
#
# Subscribers: alice@hims.net (AKA, TS 35.208 test set 1 K/OP) and bob@hims.net (SIP Digest,
# password bob-secret), both allowed to roam in vims.net. Addresses only, never names: the
# binaries are static glibc ones, and glibc's NSS (getaddrinfo of a name) needs shared libraries.
set -u
export PATH=/bin:/sbin RUST_LOG=info
UE=10.0.0.1 UE6=fd00::1 P=10.0.0.2 P6=fd00::2
I=10.0.1.20 S=10.0.1.30 H=10.0.1.40 DNS=10.0.1.50
K=465b5ce8b199b49faa5f0a2ee238a6bc OP=cdc202d5123e20f62b6d676ac72cb318
D=/tmp/ims
fails=0
pids=""

uptime_s() { cut -d' ' -f1 /proc/uptime; }
ok() { echo "VM-STEP $1: ok ($(uptime_s)s)"; }
fail() { echo "VM-STEP $1: FAIL $2"; fails=$((fails + 1)); }
core() { ip2 netns exec core "$@"; }
imsctl() { core /bin/imsctl --url "http://$H:8080" --token vm-lab-admin-token "$@"; }
# wait_for NAME TRIES COMMAND...: retries every 0.2 s.
wait_for() {
  name=$1 tries=$2; shift 2
  n=0
  while [ "$n" -lt "$tries" ]; do
    if "$@" >/dev/null 2>&1; then ok "$name"; return 0; fi
    n=$((n + 1)); sleep 0.2
  done
  fail "$name" "(not after $tries tries)"; return 1
}
start() { # daemon: in the core namespace, log in $D/<daemon>.log
  # ip2 itself (not the core function, which would put a subshell between): $! is then the
  # daemon's pid, as ip netns exec execs it.
  ip2 netns exec core "/bin/$1" -c "$D/$1.toml" >"$D/$1.log" 2>&1 &
  pids="$pids $!"
}
# ue LABEL ARGS...: ims-ue in the ue namespace; its lines prefixed, 0 when every step got 2xx.
ue() {
  label=$1; shift
  ip2 netns exec ue /bin/ims-ue "$@" >"$D/ue-$label.out" 2>&1
  rc=$?
  sed "s/^/VM-UE-$label: /" "$D/ue-$label.out"
  if [ "$rc" = 0 ]; then ok "ue $label"; else fail "ue $label" "(ims-ue exit $rc)"; fi
}

# 1. Two hosts: the UE, and the core (the P-CSCF on the veth, the home network on lo).
mkdir -p "$D"
if (
  set -e
  ip2 netns add ue
  ip2 netns add core
  ip2 link add veth-ue type veth peer name veth-core
  ip2 link set veth-ue netns ue
  ip2 link set veth-core netns core
  ip2 -n ue addr add $UE/24 dev veth-ue
  ip2 -n ue addr add $UE6/64 dev veth-ue nodad
  ip2 -n core addr add $P/24 dev veth-core
  ip2 -n core addr add $P6/64 dev veth-core nodad
  for a in $I $S $H $DNS; do ip2 -n core addr add $a/32 dev lo; done
  for ns in ue core; do ip2 -n $ns link set lo up; done
  ip2 -n ue link set veth-ue up
  ip2 -n core link set veth-core up
); then ok "namespaces"; else fail "namespaces" "(ip2 failed)"; fi
wait_for "veth carries traffic" 50 ip2 netns exec ue ping -c1 -W1 $P

# 2. The configs, as bin/tests/lab/mod.rs writes them.
cat >"$D/ims-dns.toml" <<EOF
listen = ["$DNS:53"]
ttl = 300
[[zone]]
origin = "hims.net"
records = [
  { type = "NAPTR", name = "@", order = 10, preference = 50, flags = "s", service = "SIP+D2U", replacement = "_sip._udp" },
  { type = "NAPTR", name = "@", order = 20, preference = 50, flags = "s", service = "SIP+D2T", replacement = "_sip._tcp" },
  { type = "SRV", name = "_sip._udp", priority = 0, weight = 0, port = 5060, target = "icscf1" },
  { type = "SRV", name = "_sip._tcp", priority = 0, weight = 0, port = 5060, target = "icscf1" },
  { type = "A", name = "icscf1", address = "$I" },
  { type = "A", name = "scscf1", address = "$S" },
  { type = "A", name = "hss1", address = "$H" },
]
[[zone]]
origin = "vims.net"
records = [
  { type = "A", name = "pcscf1", address = "$P" },
  { type = "AAAA", name = "pcscf1", address = "$P6" },
]
EOF
cat >"$D/hss.toml" <<EOF
database = "sqlite://$D/hss.sqlite"
admin_listen = "$H:8080"
admin_token = "vm-lab-admin-token"
home_network = "hims.net"
[diameter]
listen = "$H:3868"
origin_host = "hss1.hims.net"
origin_realm = "hims.net"
allowed_peers = ["icscf1.hims.net", "scscf1.hims.net"]
[diameter.capabilities]
server_names = ["sip:scscf1.hims.net:5060"]
EOF
cx() { # origin host
  # A long answer timeout: the VM is emulated (and the binaries unoptimised), and 50 UEs
  # register at once below.
  printf '[diameter]\nhss = "%s:3868"\norigin_host = "%s"\norigin_realm = "hims.net"\ndestination_realm = "hims.net"\nrequest_timeout_seconds = 30\n' "$H" "$1"
}
cat >"$D/scscf.toml" <<EOF
sip_listen = "$S:5060"
name = "sip:scscf1.hims.net:5060"
realm = "hims.net"
home_domains = ["hims.net"]
dns = ["$DNS:53"]
database = "sqlite://$D/scscf.sqlite"
# Short registrations are allowed: an IPsec UE's SAs must go when its registration expires.
min_expires = 2
$(cx scscf1.hims.net)
EOF
cat >"$D/icscf.toml" <<EOF
sip_listen = "$I:5060"
via_host = "icscf1.hims.net"
home_domain = "hims.net"
dns = ["$DNS:53"]
$(cx icscf1.hims.net)

[[scscf]]
uri = "sip:scscf1.hims.net:5060"
EOF
cat >"$D/pcscf.toml" <<EOF
sip_listen = "$P:5060"
sip_listen_v6 = "[$P6]:5060"
via_host = "pcscf1.vims.net"
visited_network_id = "vims.net"
dns = ["$DNS:53"]
[ipsec]
mode = "preferred"
port_c = 5062
port_s = 5063
sa_margin_secs = 2
EOF

# 3. The core: DNS and HSS, subscribers through the admin API, then the CSCFs.
start ims-dns
start hss
wait_for "HSS admin API up" 300 imsctl health
imsctl subscriber add --impi alice@hims.net --impu sip:alice@hims.net --impu tel:+15550001 \
  --k $K --op $OP --amf 8000 --roaming vims.net >"$D/prov-alice.out" 2>&1 &&
  ok "provision alice (AKA)" || { fail "provision alice (AKA)" "$(cat "$D/prov-alice.out")"; }
imsctl subscriber add --impi bob@hims.net --impu sip:bob@hims.net \
  --realm hims.net --password bob-secret --roaming vims.net >"$D/prov-bob.out" 2>&1 &&
  ok "provision bob (Digest)" || { fail "provision bob (Digest)" "$(cat "$D/prov-bob.out")"; }
imsctl subscriber add --impi carol@hims.net --impu sip:carol@hims.net \
  --k $K --op $OP --amf 8000 --roaming vims.net >"$D/prov-carol.out" 2>&1 &&
  ok "provision carol (AKA)" || { fail "provision carol (AKA)" "$(cat "$D/prov-carol.out")"; }
start scscf
start icscf
start pcscf
pcscf_pid=$!
peers_up() { imsctl metrics | grep -q '^ims_hss_diameter_peers_up 2$'; }
wait_for "CSCFs connected to the HSS" 300 peers_up
wait_for "P-CSCF started" 300 grep -q "P-CSCF started" "$D/pcscf.log"
echo "VM-PCSCF-IPSEC: $(grep -m1 'IPsec' "$D/pcscf.log")"
if grep -q 'IPsec available' "$D/pcscf.log"; then ok "P-CSCF IPsec available"; else
  fail "P-CSCF IPsec available" "(no 'IPsec available' line)"; fi

# 4. UEs from their own namespace, through the P-CSCF only.
ue aka --pcscf $P:5060 --impi alice@hims.net --k $K --op $OP --fetch-reg --deregister
ue digest --pcscf $P:5060 --impi bob@hims.net --password bob-secret --deregister
ue digest-tcp --pcscf $P:5060 --impi bob@hims.net --password bob-secret --transport tcp --deregister
ue aka-v6 --pcscf "[$P6]:5060" --local "[$UE6]:0" --impi alice@hims.net --k $K --op $OP --deregister
# A wrong password: 403 and exit 1.
ip2 netns exec ue /bin/ims-ue --pcscf $P:5060 --impi bob@hims.net --password nope >"$D/ue-bad.out" 2>&1
rc=$?
sed "s/^/VM-UE-wrong-password: /" "$D/ue-bad.out"
if [ "$rc" = 1 ] && grep -q ': 403' "$D/ue-bad.out"; then ok "wrong password gets 403"; else
  fail "wrong password gets 403" "(ims-ue exit $rc)"; fi

# 5. IPsec between the UE and the P-CSCF (TS 33.203): the UE's SAs from the 401, the second
#    REGISTER and the deregistration through them, nothing left afterwards.
sas() { echo "$(ip2 -n "$1" xfrm state | grep -c '^src')/$(ip2 -n "$1" xfrm policy | grep -c '^src')"; }
# ESP packets counted by the kernel on every SA of a namespace.
esp_packets() {
  ip2 -n "$1" -s xfrm state | awk '/\(packets\)/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\(packets\)/) { sub(/\(packets\).*/, "", $i); s += $i } } END { print s + 0 }'
}
# The same per SA: "<spi>=<packets>" for each.
esp_per_sa() {
  ip2 -n "$1" -s xfrm state | awk '/proto esp spi/ { spi = $4 } /\(packets\)/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\(packets\)/) { sub(/\(packets\).*/, "", $i); printf "%s=%s ", spi, $i } }'
}
# The hard time limits (s) of the core's SAs or policies, smallest first.
hard_lifetimes() {
  ip2 -n core -s xfrm "$1" | awk '/expire add:/ { for (i = 1; i <= NF; i++) if ($i == "hard") { v = $(i + 1); sub(/\(sec\).*/, "", v); print v } }' | sort -n | tr '\n' ' '
}
# held LABEL ARGS...: ims-ue registers, holds (until $D/release-LABEL exists, 60 s at most),
# deregisters; in the background. finish LABEL waits for it and prints its lines.
held() {
  label=$1; shift
  ip2 netns exec ue /bin/ims-ue "$@" --hold 60 --release "$D/release-$label" --deregister \
    >"$D/ue-$label.out" 2>&1 &
  eval "pid_$label=$!"
}
release() { touch "$D/release-$1"; }
finish() {
  eval "wait \$pid_$1"
  rc=$?
  sed "s/^/VM-UE-$1: /" "$D/ue-$1.out"
  if [ "$rc" = 0 ]; then ok "ue $1"; else fail "ue $1" "(ims-ue exit $rc)"; fi
}
registered() { grep -q 'expires=600: 200' "$D/ue-$1.out"; }
AKA_ALICE="--pcscf $P:5060 --impi alice@hims.net --k $K --op $OP"

if command -v tcpdump >/dev/null; then
  core tcpdump -Z root -i veth-core -n -U -w "$D/veth.pcap" >"$D/tcpdump.log" 2>&1 &
  tcpdump_pid=$!
  wait_for "capture on the veth" 50 grep -q 'listening on' "$D/tcpdump.log"
else
  tcpdump_pid=""; fail "capture on the veth" "(no tcpdump in the VM)"
fi
# 5a. A UE whose SAs iproute2 installs (tests/vm/ue-xfrm-hook.sh), ims-ue as its SIP side;
#     ims-ue with its own SAs, over UDP and over TCP.
no_sas() { [ "$(sas core)" = 0/0 ]; }
# ipsec_ue LABEL IP PORT ARGS...: registers from IP:PORT (protected server port PORT+1) to the
# P-CSCF of IP's family, holds, shows the SAs, counters and lifetimes, deregisters, shows what
# is left.
ipsec_ue() {
  label=$1 ip=$2 port=$3; shift 3
  case $ip in
    *:*) local_addr="[$ip]:$port" pcscf="[$P6]:5060" ;;
    *) local_addr="$ip:$port" pcscf="$P:5060" ;;
  esac
  held "$label" --pcscf "$pcscf" --impi alice@hims.net --k $K --op $OP \
    --local "$local_addr" --port-us $((port + 1)) "$@"
  if wait_for "$label UE registered through IPsec" 150 registered "$label"; then
    echo "VM-SAS-$label: core=$(sas core) ue=$(sas ue)"
    echo "VM-ESP-$label: core=$(esp_packets core) ue=$(esp_packets ue)"
    echo "VM-ESP-SAS-$label: $(esp_per_sa core)"
    echo "VM-LIFETIME-$label: $(hard_lifetimes state) / $(hard_lifetimes policy)"
    ip2 -n core -s xfrm state | sed "s/^/VM-XFRM-STATS-$label: /"
  fi
  release "$label"; finish "$label"
  # (Over TCP the P-CSCF keeps the SAs 2 s more, for its 200 OK to cross them.)
  wait_for "$label SAs removed" 50 no_sas
  echo "VM-SAS-AFTER-$label: core=$(sas core) ue=$(sas ue)"
}
ipsec_ue hook $UE 5100 --ipsec-hook /bin/ue-xfrm-hook
ipsec_ue own $UE 5110 --ipsec --refresh --fetch-reg
ipsec_ue tcp $UE 5160 --ipsec --transport tcp --fetch-reg
ipsec_ue v6 $UE6 5200 --ipsec
# 5a. Pager mode between two IPsec UEs (issue #17): carol registers through her SAs and waits;
#     alice, through hers, sends her a MESSAGE (P, S, I with LIR, S, P); it reaches carol at
#     her protected server port, so through her SAs (the kernel lets nothing else in there).
held imcallee --pcscf $P:5060 --impi carol@hims.net --k $K --op $OP \
  --local "$UE:5300" --port-us 5301 --ipsec --await-messages 1
if wait_for "imcallee UE registered through IPsec" 150 registered imcallee; then
  ue imcaller $AKA_ALICE --local "$UE:5310" --port-us 5311 --ipsec \
    --message-to sip:carol@hims.net --message-text "hello carol" --deregister
  got_message() { grep -q '^MESSAGE from' "$D/ue-imcallee.out"; }
  wait_for "carol got the MESSAGE" 150 got_message
  echo "VM-ESP-imcallee: core=$(esp_packets core) ue=$(esp_packets ue)"
fi
release imcallee; finish imcallee
wait_for "msg SAs removed" 50 no_sas
# 5a. A deregistration by the network (the HSS's RTR; the S-CSCF's reg event NOTIFY reaches
#     the P-CSCF's own subscription): the P-CSCF removes that UE's SAs at once, not at expiry.
#     The UE's own de-REGISTER afterwards finds no SA at the P-CSCF and times out; ims-ue
#     removes its SAs when it exits.
held rtr $AKA_ALICE --local "$UE:5400" --port-us 5401 --ipsec --timeout 3
if wait_for "rtr UE registered through IPsec" 150 registered rtr; then
  echo "VM-SAS-rtr: core=$(sas core)"
  imsctl subscriber deregister alice@hims.net >/dev/null 2>&1
  wait_for "SAs gone when the network deregistered the UE" 300 no_sas
  echo "VM-SAS-AFTER-rtr: core=$(sas core)"
fi
release rtr; wait "$pid_rtr"; sed "s/^/VM-UE-rtr: /" "$D/ue-rtr.out"
# 5b. A second REGISTER whose Security-Verify or Security-Client is not the agreed one gets
#     494 (through the SAs), and the SAs of that failed attempt go on both sides.
#     A wrong RES through the new SAs gets 403, and they go too.
for tc in verify:494 client:494 res:403; do
  t=${tc%:*} code=${tc#*:}
  ip2 netns exec ue /bin/ims-ue $AKA_ALICE --local "$UE:5140" --port-us 5141 --ipsec \
    --ipsec-tamper $t >"$D/ue-tamper-$t.out" 2>&1
  rc=$?
  sed "s/^/VM-UE-tamper-$t: /" "$D/ue-tamper-$t.out"
  if [ "$rc" = 1 ] && grep -q "expires=600: $code" "$D/ue-tamper-$t.out"; then ok "tampered $t gets $code"; else
    fail "tampered $t gets $code" "(ims-ue exit $rc)"; fi
  echo "VM-SAS-AFTER-tamper-$t: core=$(sas core) ue=$(sas ue)"
done
# 5c. A registration that expires takes its SAs with it (3 s + the 2 s margin here).
ue expiry $AKA_ALICE --local "$UE:5150" --port-us 5151 --ipsec --expires 3
echo "VM-SAS-expiry: core=$(sas core)"
wait_for "SAs gone when the registration expired" 100 no_sas
# 5d. The UE comes back (it restarted without deregistering) from the same ports, then from
#     new ones: each time exactly the four SAs of the newest registration remain at the
#     P-CSCF (no EEXIST, no leak).
ue newport1 $AKA_ALICE --local "$UE:5120" --port-us 5121 --ipsec
ue sameport $AKA_ALICE --local "$UE:5120" --port-us 5121 --ipsec
echo "VM-SAS-sameport: core=$(sas core)"
held newport2 $AKA_ALICE --local "$UE:5130" --port-us 5131 --ipsec
if wait_for "newport UE registered again" 150 registered newport2; then
  echo "VM-SAS-newport: core=$(sas core) ue=$(sas ue)"
fi
release newport2; finish newport2
echo "VM-SAS-AFTER-newport: core=$(sas core) ue=$(sas ue)"
if [ -n "$tcpdump_pid" ]; then
  kill "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null
  # SIP in clear on a protected port: any UDP datagram, any TCP segment with a payload (the
  # FIN/ACKs of a connection closed after its SAs went carry no SIP).
  protected_sip='(port 5062 or port 5063) and (udp or (tcp and (((ip[2:2] - ((ip[0] & 0xf) << 2)) - ((tcp[12] & 0xf0) >> 2)) != 0)))'
  count() { tcpdump -Z root -n -r "$D/veth.pcap" "$1" 2>>"$D/tcpdump.log" | wc -l; }
  echo "VM-CAPTURE: esp=$(count esp) clear-protected=$(count "$protected_sip")" \
    "clear-5060=$(count 'udp port 5060') bytes=$(wc -c <"$D/veth.pcap")"
  sed 's/^/VM-TCPDUMP: /' "$D/tcpdump.log"
fi
# 5d'. Only what a UE's SAs carried is served at the protected server port (TS 33.203 §7.1;
#     after the capture, which must see no clear SIP there): with a UE registered through
#     its SAs, a REGISTER in clear from another port of its address to port_ps gets no
#     answer (the kernel lets it in: no policy covers that port), the P-CSCF says it dropped
#     it, and the UE's registration is unharmed (its de-REGISTER through the SAs gets 200).
held guarded $AKA_ALICE --local "$UE:5500" --port-us 5501 --ipsec
if wait_for "guarded UE registered through IPsec" 150 registered guarded; then
  ip2 netns exec ue /bin/ims-ue --pcscf $P:5063 --impi alice@hims.net --k $K --op $OP \
    --local "$UE:5590" --timeout 3 >"$D/ue-clear-protected.out" 2>&1
  rc=$?
  sed "s/^/VM-UE-clear-protected: /" "$D/ue-clear-protected.out"
  if [ "$rc" != 0 ] && grep -q 'no answer from the P-CSCF' "$D/ue-clear-protected.out" &&
    ! grep -q 'expires=[0-9]*: [0-9]' "$D/ue-clear-protected.out" &&
    grep -q 'no IPsec SA covers: dropped' "$D/pcscf.log"; then
    ok "clear REGISTER at the protected port dropped"
  else
    fail "clear REGISTER at the protected port dropped" "(ims-ue exit $rc)"
  fi
  grep 'no IPsec SA covers' "$D/pcscf.log" | sed 's/^/VM-PCSCF-DROP: /'
fi
release guarded; finish guarded
wait_for "guarded SAs removed" 50 no_sas
# 5e. 50 UEs at once, each its own subscriber, ports and SAs.
n=1 provisioned=0
while [ "$n" -le 50 ]; do
  imsctl subscriber add --impi "ue$n@hims.net" --impu "sip:ue$n@hims.net" --k $K --op $OP \
    --amf 8000 --roaming vims.net >/dev/null 2>&1 && provisioned=$((provisioned + 1))
  n=$((n + 1))
done
[ "$provisioned" = 50 ] && ok "provision 50 UEs" || fail "provision 50 UEs" "($provisioned)"
n=1
while [ "$n" -le 50 ]; do
  held "m$n" --pcscf $P:5060 --impi "ue$n@hims.net" --k $K --op $OP --timeout 60 \
    --local "$UE:$((7000 + 2 * n))" --port-us $((7001 + 2 * n)) --ipsec
  n=$((n + 1))
done
all_registered() { [ "$(grep -l 'expires=600: 200' "$D"/ue-m*.out 2>/dev/null | wc -l)" = 50 ]; }
wait_for "50 UEs registered through IPsec" 600 all_registered
echo "VM-SAS-50: core=$(sas core) ue=$(sas ue) registered=$(grep -l 'expires=600: 200 (1 challenge(s), IPsec)' "$D"/ue-m*.out 2>/dev/null | wc -l)"
n=1
while [ "$n" -le 50 ]; do release "m$n"; n=$((n + 1)); done
n=1 done50=0
while [ "$n" -le 50 ]; do
  eval "wait \$pid_m$n" && done50=$((done50 + 1))
  n=$((n + 1))
done
echo "VM-50-UES: ok=$done50 deregistered=$(grep -l 'expires=0: 200 (0 challenge(s), IPsec)' "$D"/ue-m*.out 2>/dev/null | wc -l)"
[ "$done50" = 50 ] && ok "50 UEs registered and deregistered" || {
  fail "50 UEs registered and deregistered" "($done50 ok)"
  for f in "$D"/ue-m*.out; do grep -q 'expires=0: 200' "$f" || sed "s|^|VM-UE-$(basename "$f" .out): |" "$f"; done
}
echo "VM-SAS-AFTER-50: core=$(sas core) ue=$(sas ue)"

# 5f. A P-CSCF killed with SAs installed: the next one removes them when it starts (our
#     marker); one stopped with SIGTERM removes its own.
# restart_pcscf MODE: starts a P-CSCF with ipsec.mode MODE and waits for it.
restart_pcscf() {
  sed -i "s/^mode = .*/mode = \"$1\"/" "$D/pcscf.toml"
  starts=$(grep -c 'P-CSCF started' "$D/pcscf.log")
  ip2 netns exec core /bin/pcscf -c "$D/pcscf.toml" >>"$D/pcscf.log" 2>&1 &
  pcscf_pid=$!
  pids="$pids $pcscf_pid"
  started() { [ "$(grep -c 'P-CSCF started' "$D/pcscf.log")" -gt "$starts" ]; }
  wait_for "P-CSCF restarted ($1)" 300 started
}
# forget PID: not among the daemons that must stay alive.
forget() { keep=""; for p in $pids; do [ "$p" = "$1" ] || keep="$keep $p"; done; pids=$keep; }
ue crash $AKA_ALICE --local "$UE:5170" --port-us 5171 --ipsec
echo "VM-SAS-before-kill: core=$(sas core)"
kill -9 "$pcscf_pid"; wait "$pcscf_pid" 2>/dev/null; forget "$pcscf_pid"
echo "VM-SAS-killed: core=$(sas core)"
restart_pcscf preferred
echo "VM-SAS-restarted: core=$(sas core)"
ue before-stop $AKA_ALICE --local "$UE:5180" --port-us 5181 --ipsec
echo "VM-SAS-before-stop: core=$(sas core)"
kill "$pcscf_pid"; wait "$pcscf_pid" 2>/dev/null; forget "$pcscf_pid"
echo "VM-SAS-stopped: core=$(sas core)"
# 5g. ipsec.mode = "required": no sec-agree gets 421, SIP Digest (no keys) 403, AKA with IPsec
#     registers.
restart_pcscf required
# expect LABEL CODE ARGS...: ims-ue's first REGISTER must end with CODE.
expect() {
  label=$1 code=$2; shift 2
  ip2 netns exec ue /bin/ims-ue "$@" >"$D/ue-$label.out" 2>&1
  rc=$?
  sed "s/^/VM-UE-$label: /" "$D/ue-$label.out"
  if [ "$rc" = 1 ] && grep -q "expires=600: $code" "$D/ue-$label.out"; then ok "$label gets $code"; else
    fail "$label gets $code" "(ims-ue exit $rc)"; fi
}
expect required-plain 421 $AKA_ALICE
expect required-digest 403 --pcscf $P:5060 --impi bob@hims.net --password bob-secret --ipsec
ue required-aka $AKA_ALICE --local "$UE:5190" --port-us 5191 --ipsec --deregister
echo "VM-SAS-AFTER-required: core=$(sas core) ue=$(sas ue)"

# 6. Nothing IPsec left behind, every daemon still alive.
for ns in ue core; do
  ip2 -n $ns xfrm state | sed "s/^/VM-XFRM-$ns state: /"
  ip2 -n $ns xfrm policy | sed "s/^/VM-XFRM-$ns policy: /"
  echo "VM-XFRM-LEFT-$(echo $ns | tr a-z A-Z): $(ip2 -n $ns xfrm state | wc -l) $(ip2 -n $ns xfrm policy | wc -l)"
done
for p in $pids; do kill -0 "$p" 2>/dev/null || fail "daemons alive" "(pid $p exited)"; done
# Stop them (SIGTERM, then SIGKILL after 5 s).
kill $pids 2>/dev/null
n=0
while [ "$n" -lt 25 ]; do
  alive=""
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
  [ -z "$alive" ] && break
  n=$((n + 1)); sleep 0.2
done
if [ -n "$alive" ]; then fail "daemons stop on SIGTERM" "(still running:$alive)"; kill -9 $alive; fi

if [ "$fails" = 0 ]; then echo "VM-RESULT: PASS"; else
  echo "VM-RESULT: FAIL ($fails failed steps)"
  for l in "$D"/*.log; do sed "s|^|[$(basename "$l" .log)] |" "$l"; done
fi
