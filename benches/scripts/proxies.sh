# shellcheck shell=bash
# The proxy configs of the bench scripts, sourced by compare.sh and interleave.sh.
#
# The configs are equivalent and minimal: no proxy adds request ids, trace context or
# x-forwarded-* headers (nginx and HAProxy add none without being told to), so the upstream does
# the same work behind each. nginx and HAProxy get one worker here; Pillion and Envoy get theirs
# on the command line.
#
# Each write_* DIR writes its config into DIR from HTTP_PORT (the HTTP/1.1 listener), ECHO_PORT
# (the upstream) and ADMIN_PORT (Pillion, Envoy). Optional: H2_PORT (an h2c listener), TCP_PORT
# with SINK_PORT (a TCP relay), NGINX_STREAM (the path of nginx's stream module, for its relay),
# FORWARDED=1 (Pillion keeps its x-forwarded-* headers, for binaries that predate
# `forwarded_headers`).

pillion_http_listener() { # NAME PORT
    cat <<EOF
  - name: $1
    address: 127.0.0.1:$2
    protocol: http
    request_id: false
    trace_context: false
EOF
    [[ ${FORWARDED:-0} == 1 ]] || echo "    forwarded_headers: false"
    echo "    cluster: app"
}
write_pillion() { # DIR
    {
        echo "admin: { address: 127.0.0.1:$ADMIN_PORT, health_address: null }"
        echo "listeners:"
        pillion_http_listener in "$HTTP_PORT"
        if [[ -n ${H2_PORT:-} ]]; then pillion_http_listener in-h2 "$H2_PORT"; fi
        if [[ -n ${TCP_PORT:-} ]]; then
            cat <<EOF
  - name: tcp
    address: 127.0.0.1:$TCP_PORT
    protocol: tcp
    cluster: sink
EOF
        fi
        echo "clusters:"
        echo "  - name: app"
        echo "    endpoints: [127.0.0.1:$ECHO_PORT]"
        if [[ -n ${TCP_PORT:-} ]]; then
            echo "  - name: sink"
            echo "    endpoints: [127.0.0.1:$SINK_PORT]"
        fi
    } >"$1/pillion.yaml"
}

envoy_http_listener() { # NAME PORT
    cat <<EOF
  - name: $1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          generate_request_id: false
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: app }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}
envoy_cluster() { # NAME PORT
    cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
EOF
}
write_envoy() { # DIR
    {
        cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $ADMIN_PORT } }
static_resources:
  listeners:
EOF
        envoy_http_listener in "$HTTP_PORT"
        if [[ -n ${H2_PORT:-} ]]; then envoy_http_listener in_h2 "$H2_PORT"; fi
        if [[ -n ${TCP_PORT:-} ]]; then
            cat <<EOF
  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: $TCP_PORT } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: sink
EOF
        fi
        echo "  clusters:"
        envoy_cluster app "$ECHO_PORT"
        if [[ -n ${TCP_PORT:-} ]]; then envoy_cluster sink "$SINK_PORT"; fi
    } >"$1/envoy.yaml"
}

nginx_server() { # LISTEN
    cat <<EOF
    server {
        listen $1;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}
write_nginx() { # DIR
    local d=$1
    mkdir -p "$d/tmp"
    {
        if [[ -n ${TCP_PORT:-} && -f ${NGINX_STREAM:-} ]]; then echo "load_module $NGINX_STREAM;"; fi
        cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream app {
        server 127.0.0.1:$ECHO_PORT;
        keepalive 128;
        keepalive_requests 100000000;
    }
EOF
        nginx_server "127.0.0.1:$HTTP_PORT"
        if [[ -n ${H2_PORT:-} ]]; then nginx_server "127.0.0.1:$H2_PORT http2"; fi
        echo "}"
        if [[ -n ${TCP_PORT:-} && -f ${NGINX_STREAM:-} ]]; then
            echo "stream { server { listen 127.0.0.1:$TCP_PORT; proxy_pass 127.0.0.1:$SINK_PORT; } }"
        fi
    } >"$d/nginx.conf"
}

write_haproxy() { # DIR
    {
        cat <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    maxconn 8000
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    http-reuse always
frontend in
    bind 127.0.0.1:$HTTP_PORT
EOF
        if [[ -n ${H2_PORT:-} ]]; then echo "    bind 127.0.0.1:$H2_PORT proto h2"; fi
        cat <<EOF
    default_backend app
backend app
    server echo 127.0.0.1:$ECHO_PORT
EOF
        if [[ -n ${TCP_PORT:-} ]]; then
            cat <<EOF
listen tcp
    mode tcp
    bind 127.0.0.1:$TCP_PORT
    server sink 127.0.0.1:$SINK_PORT
EOF
        fi
    } >"$1/haproxy.cfg"
}
