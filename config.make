# ngx_http_quota_module: make rules (sourced by nginx's auto/make after
# objs/Makefile is written).  The Redis scripts and their protocol are
# src/lua/*.lua and src/lua/protocol.def; src/lua/gen.sh turns them into
# two C headers in $NGX_OBJS, regenerated whenever a source changes.

ngx_quota_lua="$ngx_addon_dir/src/lua"

cat << END >> $NGX_MAKEFILE

$NGX_OBJS/ngx_http_quota_protocol.h: $ngx_quota_lua/gen.sh \\
        $ngx_quota_lua/protocol.def
	sh $ngx_quota_lua/gen.sh protocol $ngx_quota_lua > \$@.tmp
	mv -f \$@.tmp \$@

$NGX_OBJS/ngx_http_quota_scripts.h: $ngx_quota_lua/gen.sh \\
        $ngx_quota_lua/protocol.def $ngx_quota_lua/*.lua
	sh $ngx_quota_lua/gen.sh scripts $ngx_quota_lua > \$@.tmp
	mv -f \$@.tmp \$@

END
