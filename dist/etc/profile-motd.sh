# The login banner, CoreOS style: "<Name> <channel> (<version>)", then failed units.
if [ -n "$PS1" ]; then
  group=$(sed -n 's/^GROUP=//p' /usr/share/coreos/update.conf /etc/coreos/update.conf 2>/dev/null | tail -n 1)
  version=$(sed -n 's/^VERSION=//p' /usr/lib/os-release | tr -d '"')
  printf 'Ferrite %s (%s)\n' "${group:-stable}" "$version"
  failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}')
  if [ -n "$failed" ]; then
    printf 'Failed Units: %s\n' "$(printf '%s\n' "$failed" | wc -l)"
    printf '%s\n' "$failed" | sed 's/^/  /'
  fi
fi
