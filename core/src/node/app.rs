//! Calling the application's task and carrying out its commands.

use super::{Node, Role};
use crate::task::{Command, Context, Task};
use crate::Instant;

impl Node {
    /// Calls the task (if built), then carries out the commands it recorded.
    pub(super) fn call(&mut self, now: Instant, f: impl FnOnce(&mut dyn Task, &mut Context)) {
        if let Some(task) = self.task.as_mut() {
            f(task.as_mut(), &mut self.ctx);
        }
        self.run_commands(now);
    }

    fn run_commands(&mut self, now: Instant) {
        let commands = std::mem::take(&mut self.ctx.commands);
        for c in commands {
            let primary = matches!(self.role, Role::Primary { .. });
            match c {
                Command::ExitJob(reason) => {
                    self.retry_exit = Some(reason.clone());
                    self.send_exit(reason);
                }
                _ if !primary => {
                    if let Command::Request(to, ..) = &c {
                        self.ctx.request_done(*to);
                    }
                    tracing::warn!(node = %self.cfg.node, command = ?c, "command from a task that is not primary; ignored");
                }
                Command::FlagMeta(dir, meta) => self.flag_meta(dir, meta),
                Command::Request(to, id, req) => self.start_request(to, id, req),
                Command::Respond(sid, resp) => self.respond(sid, resp),
                Command::AdvanceEpoch(from) => self.send_advance(from, false),
                Command::Replicate(data) => self.replicate(data),
                Command::SetTimer(after, token) => {
                    self.timer_seq += 1;
                    self.primary
                        .timers
                        .insert((now + after, self.timer_seq), token);
                }
            }
        }
    }
}

impl Node {
    /// Fires the application's due timers.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some((&(at, seq), &token)) = self.primary.timers.iter().next() {
            if at > now || self.primary_of().is_none() {
                return;
            }
            self.primary.timers.remove(&(at, seq));
            self.call(now, |t, ctx| t.timer(ctx, token));
        }
    }
}
