# Sourced by benches/run and benches/instructions: nginx as the proxy under
# test, set up the same way in both. BARE=1 leaves out the fields wakegate
# adds to every request (X-Forwarded-For/-Proto/-Host, X-Request-Id; see
# "Fields" in benches/run).

# nginx_upstream PORT BARE — http level: the request id map and the backend
# pool on 127.0.0.1:PORT (keep-alive).
nginx_upstream() {
    if [[ $2 -eq 0 ]]; then
        # As ingress-nginx: the client's id, else a new one.
        cat <<'CONF'
    map $http_x_request_id $req_id {
        default $http_x_request_id;
        "" $request_id;
    }
CONF
    fi
    cat <<CONF
    upstream backend {
        server 127.0.0.1:$1;
        keepalive 64;
        keepalive_requests 100000;
    }
CONF
}

# nginx_location BARE — `location /`, passing every request to the pool.
nginx_location() {
    cat <<'CONF'
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_max_temp_file_size 0;
CONF
    if [[ $1 -eq 0 ]]; then
        cat <<'CONF'
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $req_id;
            add_header X-Request-Id $req_id always;
CONF
    fi
    echo "        }"
}
