# Multi-stage build: dependencies are installed from uv.lock in a build stage; the runtime stage
# carries only the virtual environment and the sources, and runs as a non-root user.

FROM python:3.12-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
# Pinned to the uv the Makefile bootstraps and uv.lock is kept with: another uv may resolve or
# refuse the lock differently. Only Dockerfile syntax of the built-in frontend is used (no `# syntax=` line,
# which would make BuildKit fetch a frontend image from Docker Hub first).
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
# Dependencies first, so source changes do not invalidate this layer.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY alembic.ini ./
COPY migrations ./migrations
COPY taskservice ./taskservice
RUN uv sync --locked --no-dev \
    && .venv/bin/python -m compileall -q taskservice migrations

FROM python:3.12-slim AS runtime
# UID and GID 10001, as the Kubernetes manifests' securityContext expects.
RUN groupadd --system --gid 10001 taskservice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --create-home taskservice
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
# Two malloc arenas rather than glibc's eight per core: gRPC's threads otherwise each keep memory
# of their own, and RSS drifts up as thousands of streams open and close (docs/operations.md).
ENV MALLOC_ARENA_MAX=2
# The embedded SQLite default and its development key live in /data; set DB_HOST (or
# DATABASE_URL) and JWT_SECRET_KEY to use PostgreSQL. Sources are precompiled, so a read-only
# root filesystem (as in deploy/kubernetes) costs nothing at start.
WORKDIR /data
USER 10001
EXPOSE 50051 8080
# Migrations are idempotent; with several replicas, run `taskservice migrate` as a separate job
# instead and start the containers with `taskservice serve`.
CMD ["sh", "-c", "taskservice migrate && exec taskservice serve"]
