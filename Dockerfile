# Gateway image: Node 24, compiled JavaScript only, runs as the node user.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production PORT=50051
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
USER node
EXPOSE 50051
STOPSIGNAL SIGTERM
# V8 defaults: a larger young generation bought no CPU with the gRPC fast path and cost RSS per
# open stream (README, "Performance"); NODE_OPTIONS=--max-semi-space-size=8 trades CPU for memory.
CMD ["node", "dist/main.js"]
