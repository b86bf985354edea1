#!/usr/bin/env bash
# Installs what `make test` / `make bench` need beyond Rust: pip (for the offline
# stand-in model); with --vulkan, a Vulkan driver for the wgpu tests (mesa's software
# one where there is no GPU); with --browser, headless Chromium for the dashboard
# tests; with --promtool, Prometheus's promtool for the monitoring config check. apt
# is used only where something is missing and we are root.
set -u
need_apt=()
if ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
for arg in "$@"; do
  case "$arg" in
    --vulkan)
      if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && ! ls /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
        need_apt+=(mesa-vulkan-drivers)
      fi ;;
    --browser)
      command -v chromium >/dev/null 2>&1 || need_apt+=(chromium) ;;
    --promtool)
      command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus) ;;
  esac
done
[ ${#need_apt[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  # No service may start from this install (the prometheus package ships a daemon;
  # we want its promtool): a policy-rc.d for the install only, if there is none.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  rc=$?
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" != 0 ]; then
    echo "apt-get install ${need_apt[*]} failed" >&2; exit 1
  fi
else
  echo "missing: ${need_apt[*]} (not root or no apt-get: install them yourself)." >&2
  case " ${need_apt[*]} " in
    *" python3-pip "*) exit 1 ;;
  esac
  echo "the tests that need them say that they did not run (and fail where CI requires them)." >&2
fi
