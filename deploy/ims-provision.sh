#!/bin/sh
# First-start provisioning of the compose stack (the `provision` service runs it once the HSS
# is healthy; the CSCFs start after it succeeded): the demo subscribers, as scripts/lab has
# them, in the IMS domain. Nothing to do when they are there already (the HSS keeps them on
# its volume), so every `docker-compose up` may run it again.
#
#   alice@<IMS_DOMAIN>  Digest-AKAv1-MD5, TS 35.208 set 1 K and OP, AMF 8000
#   bob@<IMS_DOMAIN>    SIP Digest MD5, password bob-secret (softphones)
#
# Then also every CSV in /etc/ims/subscribers.d/ (mount your own; columns in the README).
# Environment: IMS_DOMAIN, IMS_HSS_URL (imsctl's admin API URL).
set -eu
: "${IMS_DOMAIN:?IMS_DOMAIN is not set}"
: "${IMS_HSS_URL:?IMS_HSS_URL is not set}"

if imsctl subscriber show "alice@$IMS_DOMAIN" >/dev/null 2>&1; then
  echo "ims-provision: demo subscribers already provisioned in $IMS_DOMAIN"
else
  imsctl subscriber add --impi "alice@$IMS_DOMAIN" --impu "sip:alice@$IMS_DOMAIN" \
    --k 465b5ce8b199b49faa5f0a2ee238a6bc --op cdc202d5123e20f62b6d676ac72cb318 --amf 8000 \
    >/dev/null
  imsctl subscriber add --impi "bob@$IMS_DOMAIN" --impu "sip:bob@$IMS_DOMAIN" \
    --realm "$IMS_DOMAIN" --password bob-secret >/dev/null
  echo "ims-provision: added alice@$IMS_DOMAIN (AKA) and bob@$IMS_DOMAIN (Digest)"
fi
for csv in /etc/ims/subscribers.d/*.csv; do
  [ -e "$csv" ] || continue
  echo "ims-provision: importing $csv"
  imsctl subscriber import "$csv" || echo "ims-provision: $csv not imported (see above)"
done
