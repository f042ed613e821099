# syntax=docker/dockerfile:1
# amqp-rpc-bridge: build with dev dependencies, ship with production ones only, run as a non-root user.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY examples ./examples
RUN npm run build

FROM node:20-bookworm-slim AS production-dependencies
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:20-bookworm-slim
# tini as PID 1: forwards SIGTERM to node (which drains in-flight RPCs) and reaps zombies.
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*
# A smaller young generation: measured by npm run bench, peak RSS with 10,000 requests in flight
# falls from ~220 MB to ~200 MB and CPU per request does not rise (see docs/performance.md).
ENV NODE_ENV=production \
    PORT=8080 \
    NODE_OPTIONS=--max-semi-space-size=4
WORKDIR /app
COPY --from=production-dependencies --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
COPY --chown=node:node package.json openapi.yaml ./
# The node image's unprivileged user (uid 1000).
USER node
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
# The same image runs the sample worker: command ["node", "dist/examples/echo-worker.js"].
# The old generation's first limit at 64 MB: V8 counts the request and reply bodies a bridge holds
# (off its heap) against that limit, and with the ~20 MB it starts from, 1 MiB bodies at concurrency
# 16 set off a full collection every few requests (docs/performance.md). Not allowed in NODE_OPTIONS.
CMD ["node", "--initial-old-space-size=64", "dist/src/main.js"]
