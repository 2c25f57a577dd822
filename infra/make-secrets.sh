#!/bin/sh
# Random credentials for infra/compose.yaml, one file each, in infra/secrets/ (or $1):
#   infra/make-secrets.sh [DIR]
# Existing files are kept (a password rotated here would no longer match the one a
# database was initialised with). The folder is 0700, so other users of the host
# cannot read it; the files are 0644 because compose bind-mounts them as they are, and
# each container's non-root user must read its own. Never commit them (infra/.gitignore).
# s3_config is SeaweedFS's identity file, made from s3_access_key and s3_secret_key: the one
# identity may read, write and list the bucket `lstmpipe`, nothing else (no Admin: the bucket
# is made by compose's `s3-bucket` through SeaweedFS's shell).
# Checked by tests/infra/test_infra.py.
set -eu
dir=${1:-$(dirname "$0")/secrets}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
for name in postgres_password mlflow_password mlflow_secret_key prefect_auth_string ray_token \
  state_db_password s3_access_key s3_secret_key; do
  file="$dir/$name"
  [ -s "$file" ] && continue
  value=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # Prefect sends its auth string as HTTP basic credentials: user:password.
  [ "$name" = prefect_auth_string ] && value="lstmpipe:$value"
  printf '%s' "$value" > "$file"  # no newline: some readers keep it
  chmod 644 "$file"
done
if [ ! -s "$dir/s3_config" ]; then
  cat > "$dir/s3_config" <<JSON
{"identities": [{"name": "lstmpipe",
  "credentials": [{"accessKey": "$(cat "$dir/s3_access_key")", "secretKey": "$(cat "$dir/s3_secret_key")"}],
  "actions": ["Read:lstmpipe", "Write:lstmpipe", "List:lstmpipe", "Tagging:lstmpipe"]}]}
JSON
  chmod 644 "$dir/s3_config"
fi
echo "credentials in $dir"
