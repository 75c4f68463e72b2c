# Login shells (the host-agent runs commands with bash -lc) for the sandbox user.

# /home/agent is a bind mount that may start empty: give it the skeleton dotfiles once.
if [ -n "${HOME:-}" ] && [ -d "$HOME" ] && [ -w "$HOME" ] \
   && [ ! -e "$HOME/.profile" ] && [ ! -e "$HOME/.bash_profile" ]; then
  cp -Rn /etc/skel/. "$HOME"/
fi

# /etc/profile resets PATH: put user installs (pip --user, npm -g) back in front, as docker exec has them.
case ":${PATH}:" in
  *":${HOME}/.local/bin:"*) ;;
  *) PATH="${HOME}/.local/bin:${HOME}/.npm-global/bin:${PATH}" ;;
esac
export PATH
