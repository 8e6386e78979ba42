#!/usr/bin/env bash
# Throw-away TLS certificates, MQTT accounts and the Mosquitto password file for deploy/compose.yaml and tests.
#
#   deploy/mosquitto/make-secrets.sh [--out DIR] [STATION ...]      (default: deploy/mosquitto/generated,
#                                                                     stations station-1 station-2)
# Makes, under DIR:
#   ca.key                 the CA's private key (mounted nowhere; keep it to sign more certificates)
#   certs/ca.pem           the CA certificate: clients verify the broker with it (mqtt.tls.ca_file)
#   certs/server.pem/.key  the broker's certificate for the names mosquitto, localhost, 127.0.0.1 and any in
#                          $BROKER_HOSTNAMES (comma-separated DNS names, e.g. BROKER_HOSTNAMES=mqtt.plant.local)
#   env/<account>.env      EDGE_INSPECTOR_MQTT_USERNAME / _PASSWORD for each account: operator, plc, dashboard
#                          and one per station (the account name is the station name, see deploy/mosquitto/acl)
#   secrets/passwords      the Mosquitto password file (hashed), rebuilt from env/*.env on every run
# Safe to run again: it keeps the CA, the certificate and every account that exists and adds what is missing
# (delete DIR to start over). Needs openssl, and mosquitto_passwd (from the mosquitto package) or docker/podman.
#
# These are for trying the stack and for tests. For a plant, use certificates from the plant's CA and give each
# account a password from the plant's secret store; the file layout stays the same.
set -euo pipefail

out="$(dirname "$0")/generated"
if [ "${1:-}" = "--out" ]; then out="$2"; shift 2; fi
stations=("$@")
[ ${#stations[@]} -gt 0 ] || stations=(station-1 station-2)
accounts=(operator plc dashboard "${stations[@]}")
for name in "${accounts[@]}"; do
  case "$name" in *[!A-Za-z0-9._-]*|"") echo "make-secrets: '$name' is not a usable account name" >&2; exit 2;; esac
done
command -v openssl >/dev/null || { echo "make-secrets: openssl is not installed" >&2; exit 1; }

mkdir -p "$out/certs" "$out/env" "$out/secrets"
cd "$out"

if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -keyout ca.key -out certs/ca.pem -subj "/CN=edge-inspector example CA" 2>/dev/null
  chmod 600 ca.key
  rm -f certs/server.pem  # a new CA needs a new server certificate
fi
if [ ! -f certs/server.pem ]; then
  names="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"
  IFS=',' read -ra extra <<< "${BROKER_HOSTNAMES:-}"
  for host in "${extra[@]}"; do [ -n "$host" ] && names="$names,DNS:$host"; done
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout certs/server.key -out server.csr -subj "/CN=mosquitto" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names" > server.ext
  openssl x509 -req -in server.csr -CA certs/ca.pem -CAkey ca.key -CAcreateserial -CAserial ca.srl -days 825 \
    -out certs/server.pem -extfile server.ext 2>/dev/null
  rm -f server.csr server.ext
  # The broker container runs as its own user (uid 1883) and must read the key from the bind mount.
  chmod 644 certs/server.key
fi

for name in "${accounts[@]}"; do
  [ -f "env/$name.env" ] && continue
  printf 'EDGE_INSPECTOR_MQTT_USERNAME=%s\nEDGE_INSPECTOR_MQTT_PASSWORD=%s\n' "$name" "$(openssl rand -hex 16)" \
    > "env/$name.env"
  chmod 600 "env/$name.env"
done

# The password file from every env/*.env (accounts from earlier runs included), hashed by mosquitto_passwd.
passwd_cmd=()
if command -v mosquitto_passwd >/dev/null; then
  passwd_cmd=(mosquitto_passwd)
  file=secrets/passwords.new
else
  runner="$(command -v docker || command -v podman || true)"
  [ -n "$runner" ] || { echo "make-secrets: needs mosquitto_passwd, docker or podman" >&2; exit 1; }
  passwd_cmd=("$runner" run --rm -v "$PWD/secrets:/w" eclipse-mosquitto:2 mosquitto_passwd)
  file=/w/passwords.new
fi
rm -f secrets/passwords.new
: > secrets/passwords.new
for env in env/*.env; do
  user="$(sed -n 's/^EDGE_INSPECTOR_MQTT_USERNAME=//p' "$env")"
  password="$(sed -n 's/^EDGE_INSPECTOR_MQTT_PASSWORD=//p' "$env")"
  "${passwd_cmd[@]}" -b "$file" "$user" "$password"
done
# Readable by the broker's own user in the container; the hashes are salted PBKDF2-SHA512.
chmod 644 secrets/passwords.new
mv secrets/passwords.new secrets/passwords
echo "make-secrets: $(ls env | wc -l) accounts, certificates and password file in $out"
