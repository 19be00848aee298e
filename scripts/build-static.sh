#!/usr/bin/env bash
# Builds target/static/whirligig: a release executable for x86_64 Linux with
# nothing to load at run time. glibc is linked statically (-C
# target-feature=+crt-static, a static-pie: no dynamic loader, addresses still
# randomised); TLS is rustls with Mozilla's roots compiled in; glibc 2.34 and
# later resolve names from /etc/hosts and /etc/resolv.conf without NSS
# libraries. Then checks that it is static and runs `whirligig routes` with
# nothing else around it (in an empty chroot when run as root).
#
#   scripts/build-static.sh            # the demo app, bin `whirligig`
#   BIN=myservice PACKAGE=my-crate scripts/build-static.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BIN:-whirligig}
package=${PACKAGE:-whirligig-handler}
target=x86_64-unknown-linux-gnu
built=target/static-build/$target/release/$bin

# RUSTFLAGS apply to the target only (build scripts and proc macros stay dynamic)
# because --target is given; a separate target dir keeps the normal build's cache.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --release --target "$target" --target-dir target/static-build -p "$package" --bin "$bin"
mkdir -p target/static
cp "$built" "target/static/$bin"
out=target/static/$bin

description=$(file --brief "$out")
case "$description" in
    *"static-pie linked"* | *"statically linked"*) ;;
    *) echo "build-static: $out is not static: $description" >&2; exit 1 ;;
esac
if ldd "$out" 2>&1 | grep -q "=>"; then
    echo "build-static: $out loads shared libraries:" >&2
    ldd "$out" >&2
    exit 1
fi

# Run it where nothing but the binary exists, as in a scratch image.
# (A container build may lack the right to chroot: then an empty environment.)
if [ "$(id -u)" = 0 ] && command -v chroot > /dev/null && chroot / true 2> /dev/null; then
    empty=$(mktemp -d)
    trap 'rm -rf "$empty"' EXIT
    cp "$out" "$empty/$bin"
    chroot "$empty" "/$bin" routes > /dev/null
    where="an empty chroot"
else
    env -i "$out" routes > /dev/null
    where="an empty environment (no chroot here)"
fi
echo "build-static: $out, $(stat -c %s "$out") bytes, $description; ran in $where"
