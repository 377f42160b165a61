# Mister Smith node image: build with the Rust toolchain, run on slim Debian.

# ---- build -----------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Build-time SQL checks (if any sqlx query! macros are used) must come from
# committed .sqlx data: there is no database during `docker build`.
ENV SQLX_OFFLINE=true
# The whole workspace is needed: members (actors/), benches named in
# Cargo.toml, and migrations embedded at compile time. .dockerignore keeps
# target/ and data/ out.
COPY . .
RUN cargo build --release --locked --bin mister-smith \
    && cp target/release/mister-smith /usr/local/bin/mister-smith

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to external services; curl: container healthcheck.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
# Run as an unprivileged user that owns only its state directory.
RUN groupadd --system mister-smith \
    && useradd --system --gid mister-smith --home-dir /var/lib/mister-smith \
       --shell /usr/sbin/nologin mister-smith \
    && install -d -o mister-smith -g mister-smith /var/lib/mister-smith
COPY --from=builder /usr/local/bin/mister-smith /usr/local/bin/mister-smith
USER mister-smith
WORKDIR /var/lib/mister-smith
# 8080 HTTP API, 8081 admin API, 4697 cluster.
EXPOSE 8080 8081 4697
CMD ["mister-smith", "run"]
