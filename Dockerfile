# kubegate's image: a static-enough release build on Debian, run on distroless as a
# non-root user with no shell. Not built by the tests (no container runtime runs there);
# everything it runs is. Build: docker build -t registry.example.com/platform/kubegate:0.1.0 .

FROM rust:1.89-bookworm AS build
WORKDIR /src
# aws-lc-rs needs cmake and clang to build its C parts.
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
COPY . .
# No dev mode (nor its in-process sandbox) in the image.
# The `dist` profile: release with fat LTO and one codegen unit (Cargo.toml says why).
RUN cargo build --profile dist --locked -p kubegate --bin kubegate --no-default-features \
 && install -D -m 0755 target/dist/kubegate /out/kubegate

# glibc and CA certificates (for the issuers' discovery over TLS), nothing else: no shell,
# no package manager. The nonroot user is 65532, as the Deployment's securityContext says.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kubegate /usr/local/bin/kubegate
# glibc keeps 7 freed chunks per size in each thread's cache. A request frees dozens of
# small ones, and the overflow costs more: 8.8% of a cached request's instructions at 1000,
# 6.6% at 64 (docs/benchmarks.md). 64 per size bounds a thread's cache to about 2 MB (64 sizes up to 1,032 bytes).
ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=64
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/kubegate"]
CMD ["serve", "--config", "/etc/kubegate/config/kubegate.toml", "--log-format", "json"]
