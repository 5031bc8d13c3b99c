# burrow example template "local": a workspace that is a local process tree.
#
# - terraform_data.home   persistent: the workspace directory and its home
#                         directory under var.data_dir; survives stop, removed
#                         on delete.
# - terraform_data.agent  ephemeral (count follows the transition): runs
#                         `burrow agent --supervise` in the background,
#                         detached with setsid, output to agent.log, pid in
#                         agent.pid in the workspace directory.  The
#                         supervisor restarts the agent if it dies and ends
#                         a dead agent's session processes.
#
# The agent token reaches the agent by file only (agent.token, 0600, in the
# workspace directory, outside its home): not in its environment (Terraform's
# TF_* variables are unset before it starts), not in its argv.
#
# Stop and delete: SIGTERM to the supervisor (it stops the agent, which runs
# the shutdown script and hangs up its sessions), SIGKILL to its process
# group after 15 s; then every session process group recorded in
# sessions/ (one file per group, see agent/procgroups.py) is ended, so
# nothing survives an agent or a supervisor that was SIGKILLed.
#
# Only Terraform's built-in terraform_data resource and local-exec
# provisioners are used: `terraform init` needs no provider download.

terraform {
  required_version = ">= 1.4"
}

variable "burrow_workspace_name" {
  type = string
}

variable "burrow_workspace_owner" {
  type = string
}

variable "burrow_workspace_transition" {
  type    = string
  default = "start"
  validation {
    condition     = contains(["start", "stop", "delete"], var.burrow_workspace_transition)
    error_message = "burrow_workspace_transition must be start, stop or delete."
  }
}

variable "burrow_agent_token" {
  type      = string
  sensitive = true
  default   = ""
}

variable "burrow_access_url" {
  type    = string
  default = ""
}

variable "burrow_binary" {
  description = "The burrow executable that runs the agent."
  type        = string
  default     = "burrow"
}

variable "data_dir" {
  description = "Where workspace directories live (default ~/.local/share/burrow/workspaces)."
  type        = string
  default     = ""
}

locals {
  data_dir = var.data_dir != "" ? var.data_dir : pathexpand("~/.local/share/burrow/workspaces")
  root     = "${local.data_dir}/${var.burrow_workspace_owner}/${var.burrow_workspace_name}"
  home     = "${local.root}/home"
}

resource "terraform_data" "home" {
  input = {
    root = local.root
    home = local.home
  }

  provisioner "local-exec" {
    command     = "mkdir -p \"$HOME_DIR\""
    environment = { HOME_DIR = self.input.home }
  }

  # Delete: the agent is destroyed first (it depends on this resource).
  provisioner "local-exec" {
    when        = destroy
    command     = "case \"$ROOT\" in ''|/) exit 1;; esac; rm -rf -- \"$ROOT\""
    environment = { ROOT = self.input.root }
  }
}

resource "terraform_data" "agent" {
  count      = var.burrow_workspace_transition == "start" ? 1 : 0
  depends_on = [terraform_data.home]

  # A new token (each start build) replaces the process.
  triggers_replace = [sha256(var.burrow_agent_token), var.burrow_binary, var.burrow_access_url]

  input = {
    pid_file = "${local.root}/agent.pid"
    run_dir  = local.root
  }

  provisioner "local-exec" {
    working_dir = local.home
    command     = <<-EOT
      old_umask=$(umask)
      umask 077
      rm -f "$TOKEN_FILE.tmp"
      printf '%s\n' "$BURROW_AGENT_TOKEN" >"$TOKEN_FILE.tmp" && mv -f "$TOKEN_FILE.tmp" "$TOKEN_FILE" || exit 1
      umask "$old_umask"
      unset BURROW_AGENT_TOKEN
      # Terraform's environment (TF_VAR_burrow_agent_token among it) is not the workspace's.
      for v in $(env | sed -n 's/^\(TF_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
      setsid "$BURROW_BINARY" agent --supervise --url "$BURROW_AGENT_URL" \
        --token-file "$TOKEN_FILE" --run-dir "$RUN_DIR" >"$LOG_FILE" 2>&1 </dev/null &
      echo $! >"$PID_FILE"
    EOT
    environment = {
      BURROW_BINARY      = var.burrow_binary
      BURROW_AGENT_URL   = var.burrow_access_url
      BURROW_AGENT_TOKEN = var.burrow_agent_token
      TOKEN_FILE         = "${local.root}/agent.token"
      RUN_DIR            = local.root
      LOG_FILE           = "${local.root}/agent.log"
      PID_FILE           = "${local.root}/agent.pid"
      HOME               = local.home
    }
  }

  # Stop and delete: see the header.  try(): states written before run_dir existed.
  provisioner "local-exec" {
    when    = destroy
    command = <<-EOT
      if [ -f "$PID_FILE" ]; then
        pid=$(cat "$PID_FILE")
        case "$pid" in
          ''|*[!0-9]*) ;;
          *)
            kill -TERM "$pid" 2>/dev/null
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null ;;
        esac
        rm -f "$PID_FILE"
      fi
      [ -n "$RUN_DIR" ] || exit 0
      # A recorded group whose leader still runs is ours only if the leader's
      # start time (field 22 of /proc/PID/stat) is the recorded one: pid reuse.
      found=0
      end_groups() {
        for f in "$RUN_DIR"/sessions/*; do
          g=$(basename "$f")
          case "$g" in ''|*[!0-9]*) continue;; esac
          want=$(cat "$f" 2>/dev/null)
          if [ -r "/proc/$g/stat" ]; then
            have=$(sed 's/.*) //' "/proc/$g/stat" 2>/dev/null | cut -d' ' -f20)
            if [ -n "$want" ] && [ "$have" != "$want" ]; then rm -f "$f"; continue; fi
          fi
          kill -s "$1" -- "-$g" 2>/dev/null && found=1
        done
      }
      end_groups HUP
      end_groups TERM
      if [ $found = 1 ]; then sleep 1; end_groups KILL; fi
      rm -rf "$RUN_DIR/sessions"
      rm -f "$RUN_DIR/agent.token" "$RUN_DIR/agent.child.pid"
      exit 0
    EOT
    environment = {
      PID_FILE = self.input.pid_file
      RUN_DIR  = try(self.input.run_dir, "")
    }
  }
}

output "burrow_agents" {
  value = [{
    name      = "main"
    resource  = "terraform_data.agent"
    os        = "linux"
    directory = local.home
  }]
}
