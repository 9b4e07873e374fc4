# The bridge, and the example webhook receiver, as static binaries on distroless.
#
#   docker build -t bridge .                                # the bridge (default, last stage)
#   docker build --target receiver -t bridge-receiver .     # examples/go-receiver
#
# Works with the classic builder and BuildKit alike (docker-compose 1.29 uses the classic
# one), so no cache mounts. GO_VERSION must be at least go.mod's go line: the official
# images set GOTOOLCHAIN=local and will not download a newer toolchain.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so editing the source does not re-download modules.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags='-s -w' -o /bridge ./cmd/bridge
RUN go build -trimpath -ldflags='-s -w' -o /go-receiver ./examples/go-receiver

# The example receiver: verifies Standard Webhooks signatures with WEBHOOK_SECRET and
# prints each message. Listens on 0.0.0.0:9000 unless given another -addr.
FROM gcr.io/distroless/static-debian12:nonroot AS receiver
COPY --from=build /go-receiver /go-receiver
EXPOSE 9000
USER nonroot:nonroot
ENTRYPOINT ["/go-receiver"]
CMD ["-addr", "0.0.0.0:9000"]

# The bridge. On a non-loopback address it refuses to start without BRIDGE_TOKEN (or
# BRIDGE_AUTH=none). There is no shell in this image, hence no HEALTHCHECK: probe
# GET /healthz and GET /readyz from the orchestrator instead.
FROM gcr.io/distroless/static-debian12:nonroot AS bridge
COPY --from=build /bridge /bridge
EXPOSE 8080
ENV BRIDGE_LISTEN=0.0.0.0:8080
USER nonroot:nonroot
ENTRYPOINT ["/bridge"]
