# segpipe training image. Build: docker build -t segpipe .
# Run:   docker run --rm -v "$PWD/data:/work/data" -v "$PWD/outputs:/work/outputs" segpipe fit --config /app/configs/demo.yaml
FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
# Dependencies first (cached layer), exactly as locked; the project itself afterwards.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY segpipe ./segpipe
RUN uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 segpipe && mkdir -p /work && chown segpipe /work
COPY --from=build /app/.venv /app/.venv
COPY configs /app/configs
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER segpipe
WORKDIR /work
VOLUME ["/work/data", "/work/outputs"]
ENTRYPOINT ["segpipe"]
CMD ["--help"]
