# Rapport's processes (rapport ingest | projector | api | alerts | value refresh); see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
RUN pip install --no-cache-dir . \
 && useradd --system --no-create-home --shell /usr/sbin/nologin rapport

USER rapport
EXPOSE 8000
CMD ["rapport", "api", "--host", "0.0.0.0"]
