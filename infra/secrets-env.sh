#!/bin/sh
# The entrypoint of the lstmpipe and MLflow images: for every variable NAME_FILE, export
# NAME with the file's contents, then run the command. Compose and Kubernetes hand
# credentials over as files (/run/secrets/...), which no `docker inspect`, command line
# (/proc/*/cmdline) or committed file shows; the servers and clients read variables:
#   PREFECT_SERVER_API_AUTH_STRING, PREFECT_API_AUTH_STRING, MLFLOW_AUTH_ADMIN_PASSWORD,
#   MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_TRACKING_PASSWORD, PGPASSWORD (libpq, asyncpg).
# Ray needs none of this: it reads RAY_AUTH_TOKEN_PATH itself.
# Checked by tests/infra/test_infra.py.
set -eu
for file_var in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1_FILE/p'); do
  name=${file_var%_FILE}
  eval "path=\${$file_var}"
  if [ ! -r "$path" ]; then
    echo "secrets-env: $file_var names $path, which cannot be read" >&2
    exit 1
  fi
  value=$(cat "$path")
  export "$name=$value"
  unset "$file_var"
done
exec "$@"
