#!/usr/bin/env bash
# Installs what `make test` / `make bench` need beyond Rust: pip (for the offline
# stand-in model) and, for the wgpu tests, a Vulkan driver (mesa's software one where
# there is no GPU). apt is used only where something is missing and we are root.
set -u
need_apt=()
if ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
if [ "${1:-}" = "--vulkan" ]; then
  if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && ! ls /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
    need_apt+=(mesa-vulkan-drivers)
  fi
fi
[ ${#need_apt[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need_apt[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null || {
    echo "apt-get install ${need_apt[*]} failed" >&2; exit 1; }
else
  echo "missing: ${need_apt[*]} (not root or no apt-get: install them yourself)." >&2
  case " ${need_apt[*]} " in
    *" python3-pip "*) exit 1 ;;
  esac
  echo "the wgpu tests will say that they did not run." >&2
fi
