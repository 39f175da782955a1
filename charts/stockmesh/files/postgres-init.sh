#!/bin/bash
# Runs once, when the PostgreSQL data directory is first initialised
# (/docker-entrypoint-initdb.d of the postgres image): one role and one
# database per stockmesh service, both named stockmesh_<service>. Passwords come from the environment
# (DB_PASSWORD_<SERVICE>, from the <name>-<service>-db Secrets), never from
# this file. Services added later need their database created by hand (see
# charts/stockmesh/README.md).
set -euo pipefail

for svc in user product inventory order notification; do
    var="DB_PASSWORD_${svc^^}"
    password="${!var:?$var is not set}"
    db="stockmesh_${svc}"
    echo "stockmesh: creating role and database ${db}"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v svc="$db" -v pw="$password" <<'SQL'
CREATE ROLE :"svc" LOGIN PASSWORD :'pw';
CREATE DATABASE :"svc" OWNER :"svc";
REVOKE ALL ON DATABASE :"svc" FROM PUBLIC;
SQL
done
