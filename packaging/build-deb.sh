#!/bin/sh
# Builds ipae-gateway_<version>_<arch>.deb with dh-virtualenv from the current work tree
# (committed or not), then runs lintian on it.
#
#   packaging/build-deb.sh [OUTPUT_DIR]      (default: dist/)
#
# Needs: dpkg-dev, debhelper, dh-virtualenv, fakeroot, lintian, python3-venv, python3-dev,
# libsystemd-dev, pkg-config, autoconf, automake, libtool, gcc (the Makefile's
# system-packages), and pip access to the package index for the Python dependencies.
# The last line printed is the path of the .deb.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$repo/pyproject.toml")
arch=$(dpkg-architecture -qDEB_HOST_ARCH)

work=$(mktemp -d "${TMPDIR:-/tmp}/ipae-gateway-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/ipae-gateway-$version"
mkdir -p "$src"

# The source package: what pip needs to install the project, the config, unit and docs.
(cd "$repo" && tar -cf - \
    --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
    pyproject.toml README.md gateway hil config systemd docs) | tar -xf - -C "$src"
cp -r "$here/debian" "$src/debian"
cp "$repo/systemd/ipae-gateway.service" "$src/debian/ipae-gateway.service"
cat > "$src/debian/changelog" <<END
ipae-gateway ($version) unstable; urgency=medium

  * Release $version.

 -- ipae-gateway maintainers <maintainers@users.noreply.b-seed-0d9cc3ee.example>  $(date -R)
END

start=$(date +%s)
(cd "$src" && dpkg-buildpackage --build=binary --no-sign -rfakeroot) > "$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
deb="ipae-gateway_${version}_${arch}.deb"
mv "$work/$deb" "$out/$deb"
echo "build-deb: built $deb in $(( $(date +%s) - start )) s" >&2

# lintian: errors fail the build, warnings are shown.
if command -v lintian >/dev/null; then
    lintian --tag-display-limit 0 "$out/$deb" > "$out/lintian.txt" 2>&1 || true
    cat "$out/lintian.txt" >&2
    if grep -q '^E: ' "$out/lintian.txt"; then
        echo "build-deb: lintian reports errors" >&2
        exit 1
    fi
fi
echo "$out/$deb"
