# Casella: one image, every protocol. Data and certificates live in volumes.
FROM python:3.11-slim

RUN groupadd --system casella && useradd --system --gid casella --home /var/lib/casella casella \
    && mkdir -p /var/lib/casella /etc/casella/tls && chown casella:casella /var/lib/casella

WORKDIR /opt/casella
COPY pyproject.toml README.md pytest_casella.py ./
COPY config ./config
COPY server ./server
COPY storage ./storage
RUN pip install --no-cache-dir .

# Ports below 1024 are bound as root, then the daemon drops to server.user/group.
ENV CASELLA_SERVER__USER=casella \
    CASELLA_SERVER__GROUP=casella \
    CASELLA_SERVER__DATA_DIR=/var/lib/casella
VOLUME ["/var/lib/casella", "/etc/casella/tls"]
EXPOSE 25 587 465 110 995 143 993

STOPSIGNAL SIGTERM
CMD ["casella", "serve"]
