# tollgate and the mock LLM upstream in one small image.
#   docker build -t tollgate .
#
# The runtime is distroless (glibc, libgcc, CA certificates, no shell, no package manager)
# and runs as the numeric user 65532, so Kubernetes' runAsNonRoot can verify it without a
# user database. Nothing in the image needs to be writable with Postgres as the store
# (k8s/ runs it with a read-only root filesystem). The embedded default, SQLite in
# ./tollgate.db, writes to the working directory /var/lib/tollgate: mount a volume there
# to keep it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate --bin tollgate-mock-llm \
 && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tollgate /src/target/release/tollgate-mock-llm /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /var/lib/tollgate
USER 65532:65532
WORKDIR /var/lib/tollgate
EXPOSE 9191 9090
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
