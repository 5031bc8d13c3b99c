# burrow example template "local": a workspace that is a local process tree.
#
# - terraform_data.home   persistent: the workspace directory and its home
#                         directory under var.data_dir; survives stop, removed
#                         on delete.
# - terraform_data.agent  ephemeral (count follows the transition): runs
#                         `burrow agent` in the background, detached with
#                         setsid, output to agent.log, pid in agent.pid in the
#                         workspace directory; killed (its whole process group)
#                         on stop and delete.
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
  }

  provisioner "local-exec" {
    working_dir = local.home
    command     = <<-EOT
      setsid "$BURROW_BINARY" agent --url "$BURROW_AGENT_URL" \
        >"$LOG_FILE" 2>&1 </dev/null &
      echo $! >"$PID_FILE"
    EOT
    environment = {
      BURROW_BINARY      = var.burrow_binary
      BURROW_AGENT_URL   = var.burrow_access_url
      BURROW_AGENT_TOKEN = var.burrow_agent_token
      LOG_FILE           = "${local.root}/agent.log"
      PID_FILE           = "${local.root}/agent.pid"
      HOME               = local.home
    }
  }

  # Stop and delete: TERM the agent's process group, KILL it if still there after 5 s.
  provisioner "local-exec" {
    when        = destroy
    command     = <<-EOT
      [ -f "$PID_FILE" ] || exit 0
      pid=$(cat "$PID_FILE")
      case "$pid" in ''|*[!0-9]*) rm -f "$PID_FILE"; exit 0;; esac
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      i=0
      while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
      rm -f "$PID_FILE"
      exit 0
    EOT
    environment = { PID_FILE = self.input.pid_file }
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
