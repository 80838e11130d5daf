#!/bin/sh
# One-shot set-up of the MinIO store of compose.yaml, run by the minio-init service
# with the MinIO client (mc). Idempotent: safe on every `docker compose up`.
#   - the bucket (BUCKET) and a lifecycle rule expiring the readiness probe's
#     objects under PREFIX/probe/ after a day (a probe whose delete failed);
#   - a user for the aggregator, with a policy limited to that bucket, whose key
#     pair is read from the aggregator's own credentials file (an AWS shared
#     credentials file: aws_access_key_id / aws_secret_access_key lines).
# The root credentials stay with MinIO and this script; the aggregator never has them.
set -eu

: "${BUCKET:?}" "${PREFIX:?}" "${ENDPOINT:?}"
export HOME=/tmp MC_CONFIG_DIR=/tmp/mc

secret() { tr -d '\r\n' < "/run/secrets/$1"; }
ini() { sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" /run/secrets/s3-credentials | tr -d '\r\n'; }

tries=0
until mc alias set store "$ENDPOINT" "$(secret minio-root-user)" "$(secret minio-root-password)" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "minio-init: $ENDPOINT did not answer in 60 s" >&2; exit 1; }
    sleep 1
done

mc mb --ignore-existing "store/$BUCKET"
# Replaced on every run so that a changed PREFIX does not leave a stale rule behind.
mc ilm rule rm --all --force "store/$BUCKET" >/dev/null 2>&1 || true
mc ilm rule add --prefix "$PREFIX/probe/" --expire-days 1 "store/$BUCKET"

cat > /tmp/policy.json <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$BUCKET"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$BUCKET/$PREFIX/*"]
    }
  ]
}
JSON
mc admin policy create store fedtune-aggregator /tmp/policy.json
mc admin user add store "$(ini aws_access_key_id)" "$(ini aws_secret_access_key)"
# Fails when already attached (a re-run); a real failure shows as the aggregator's
# "access denied" at start-up.
mc admin policy attach store fedtune-aggregator --user "$(ini aws_access_key_id)" 2>/dev/null || true
echo "minio-init: bucket $BUCKET ready, aggregator user set"
