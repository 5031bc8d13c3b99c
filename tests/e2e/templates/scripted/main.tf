# Test template: templates/local's process-tree workspace, plus the agent
# options as variables (startup/shutdown scripts, timeout, login gate) and
# extra agent flags (e.g. --force-websockets --direct-address '').

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
  type    = string
  default = "burrow"
}

variable "data_dir" {
  type = string
}

variable "startup_script" {
  type    = string
  default = ""
}

variable "shutdown_script" {
  type    = string
  default = ""
}

variable "startup_script_timeout" {
  type    = number
  default = 300
}

variable "start_blocks_login" {
  type    = bool
  default = false
}

variable "agent_args" {
  type    = string
  default = ""
}

locals {
  root = "${var.data_dir}/${var.burrow_workspace_owner}/${var.burrow_workspace_name}"
  home = "${local.root}/home"
}

resource "terraform_data" "home" {
  input = { root = local.root, home = local.home }

  provisioner "local-exec" {
    command     = "mkdir -p \"$HOME_DIR\""
    environment = { HOME_DIR = self.input.home }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = "case \"$ROOT\" in ''|/) exit 1;; esac; rm -rf -- \"$ROOT\""
    environment = { ROOT = self.input.root }
  }
}

resource "terraform_data" "agent" {
  count            = var.burrow_workspace_transition == "start" ? 1 : 0
  depends_on       = [terraform_data.home]
  triggers_replace = [sha256(var.burrow_agent_token)]
  input            = { pid_file = "${local.root}/agent.pid" }

  provisioner "local-exec" {
    working_dir = local.home
    command     = <<-EOT
      setsid "$BURROW_BINARY" agent $AGENT_ARGS >"$LOG_FILE" 2>&1 </dev/null &
      echo $! >"$PID_FILE"
    EOT
    environment = {
      BURROW_BINARY      = var.burrow_binary
      BURROW_AGENT_URL   = var.burrow_access_url
      BURROW_AGENT_TOKEN = var.burrow_agent_token
      AGENT_ARGS         = var.agent_args
      LOG_FILE           = "${local.root}/agent.log"
      PID_FILE           = "${local.root}/agent.pid"
      HOME               = local.home
    }
  }

  provisioner "local-exec" {
    when        = destroy
    command     = <<-EOT
      [ -f "$PID_FILE" ] || exit 0
      pid=$(cat "$PID_FILE")
      case "$pid" in ''|*[!0-9]*) rm -f "$PID_FILE"; exit 0;; esac
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      i=0
      while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
      rm -f "$PID_FILE"
      exit 0
    EOT
    environment = { PID_FILE = self.input.pid_file }
  }
}

output "burrow_agents" {
  value = [{
    name                   = "main"
    resource               = "terraform_data.agent"
    os                     = "linux"
    directory              = local.home
    startup_script         = var.startup_script
    shutdown_script        = var.shutdown_script
    startup_script_timeout = var.startup_script_timeout
    start_blocks_login     = var.start_blocks_login
    env                    = { BURROW_E2E = "yes" }
  }]
}
