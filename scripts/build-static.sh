#!/usr/bin/env bash
# Builds target/static/whirligig: a release executable for x86_64 Linux with
# nothing to load at run time. glibc is linked statically (-C
# target-feature=+crt-static) into a position-dependent executable (-C
# relocation-model=static): a static-pie relocates its 43,000 pointers at each
# start, most of them in the time-zone tables, and so kept 2 MiB of tables and
# relocations resident in a process that never reads them. The price is a
# fixed address for the executable's own image (its stack, heap and mappings
# are still randomised), as Go builds by default. TLS is rustls with Mozilla's
# roots compiled in; glibc 2.34 and later resolve names from /etc/hosts and
# /etc/resolv.conf without NSS libraries. Then checks that it is static, that
# `whirligig routes` prints the route table with nothing else around it (in an
# empty chroot when run as root), and that a name in that chroot's /etc/hosts
# resolves.
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
# The Dockerfile's dependency layer builds with the same flags (tests/tests/deploy.rs compares them).
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --locked --release --target "$target" --target-dir target/static-build -p "$package" --bin "$bin"
mkdir -p target/static
out=target/static/$bin
# Replaced, not overwritten: a copy still running keeps its file.
cp "$built" "$out.new"
mv -f "$out.new" "$out"

description=$(file --brief "$out")
case "$description" in
    *"pie"*) echo "build-static: $out is a static-pie, not position-dependent (RUSTFLAGS overridden?): $description" >&2; exit 1 ;;
    *"statically linked"*) ;;
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
    routes=$(chroot "$empty" "/$bin" routes)
    # Names resolve without NSS libraries: a host from /etc/hosts gets as far as
    # a refused connection (port 1), where an unresolved one fails its lookup.
    mkdir "$empty/etc"
    echo "127.0.0.1 database.static-check.internal" > "$empty/etc/hosts"
    resolved=$(DATABASE_URL=postgres://postgres@database.static-check.internal:1/x chroot "$empty" "/$bin" migrate 2>&1 || true)
    case "$resolved" in
        *"Connection refused"*) ;;
        *) echo "build-static: a name in /etc/hosts did not resolve: $resolved" >&2; exit 1 ;;
    esac
    where="an empty chroot, /etc/hosts resolved"
else
    routes=$(env -i "$out" routes)
    where="an empty environment (no chroot here)"
fi
# A binary that prints no routes is not the service (the image's stub build, say).
case "$routes" in
    NAME*) ;;
    *) echo "build-static: $bin routes printed no route table: $routes" >&2; exit 1 ;;
esac
echo "build-static: $out, $(stat -c %s "$out") bytes, $description; ran in $where"
