// SIGINT / SIGTERM handling shared by the trainer, the study runner and the
// local launcher: install a handler for both while a scope lives, restore the
// previous actions when it ends. What the handler does (set a flag, forward to
// children, exit on the second signal) is each caller's; see docs/training.md,
// "Failure behaviour".
#pragma once

#include <signal.h>

namespace specopt {
namespace detail {

class ScopedStopHandler {
 public:
  // handler: async-signal-safe (atomics, write(2), kill(2), signal(2), raise(3)).
  // on = false installs nothing (library callers that handle signals themselves).
  ScopedStopHandler(bool on, void (*handler)(int)) : on_(on) {
    if (!on_) return;
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~ScopedStopHandler() {
    if (!on_) return;
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  ScopedStopHandler(const ScopedStopHandler&) = delete;
  ScopedStopHandler& operator=(const ScopedStopHandler&) = delete;
  bool on() const { return on_; }

 private:
  bool on_;
  struct sigaction old_int_ {}, old_term_ {};
};

}  // namespace detail
}  // namespace specopt
