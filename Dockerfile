# syntax=docker/dockerfile:1
# The whirligig image: one static executable on an empty base, run as a
# non-root user. `docker build .` or Cloud Build (cloudbuild.yaml).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, from the manifests and the lock file alone, with every
# target of the workspace stubbed: this layer is reused until they change.
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY registry/Cargo.toml registry/
COPY handler/Cargo.toml handler/
COPY tests/Cargo.toml tests/
COPY handler/examples/my-service/Cargo.toml handler/examples/my-service/
COPY handler/examples/axum-app/Cargo.toml handler/examples/axum-app/
RUN mkdir -p registry/src handler/src tests/src tests/benches handler/examples/my-service/src handler/examples/axum-app/src \
 && touch registry/src/lib.rs handler/src/lib.rs handler/examples/my-service/src/lib.rs \
 && for main in handler/src/main.rs tests/src/main.rs tests/benches/push.rs tests/benches/telemetry.rs tests/benches/hot_path.rs tests/src/bench_helper.rs tests/src/soak.rs handler/examples/my-service/src/main.rs handler/examples/axum-app/src/main.rs; do \
      echo 'fn main() {}' > "$main"; \
    done \
 && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --locked --release \
      --target x86_64-unknown-linux-gnu --target-dir target/static-build -p whirligig-handler --bin whirligig
COPY . .
# The real sources are older than the stubs' build: make Cargo see them as new.
RUN touch registry/src/lib.rs handler/src/lib.rs handler/src/main.rs \
 && scripts/build-static.sh

# Nothing but the binary: TLS roots and time zones are compiled in, names
# resolve from the /etc/hosts and /etc/resolv.conf Cloud Run provides.
FROM scratch
COPY --from=build /src/target/static/whirligig /whirligig
USER 65532:65532
ENTRYPOINT ["/whirligig"]
CMD ["serve"]
