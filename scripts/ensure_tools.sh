#!/usr/bin/env bash
# Best-effort install of the DICOM validator (dciodvfy, Debian package dicom3tools) for tests.
# Tests that need it skip with a reason when it is absent; this never fails the build.
if command -v dciodvfy >/dev/null 2>&1; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  (timeout 300 apt-get -qq update && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get -qq install -y dicom3tools) \
    >/dev/null 2>&1 || echo "note: dicom3tools could not be installed; dciodvfy tests will skip"
fi
exit 0
