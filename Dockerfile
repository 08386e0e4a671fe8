# tollgate and the mock LLM upstream in one small image.
#   docker build -t tollgate .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate --bin tollgate-mock-llm

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/tollgate && chown 65532:65532 /var/lib/tollgate
COPY --from=build /src/target/release/tollgate /src/target/release/tollgate-mock-llm /usr/local/bin/
# Unprivileged; the embedded SQLite database lives in /var/lib/tollgate (mount a volume).
USER 65532:65532
WORKDIR /var/lib/tollgate
EXPOSE 9191 9090
ENTRYPOINT ["tollgate"]
CMD ["serve"]
