// Workload (c): the chat-server demo (tests/targets/chat_server.cpp, included as is with
// its main renamed) driven by the bench: users join one of five rooms, post 3 messages
// each to the room's members and leave once 12 newer users are online, as the demo's
// own simulation does.
//
//   chat_bench --seconds S             as fast as it can for S seconds
//   chat_bench --seconds S --rate R    at R messages per second (an offered load: each
//                                      message is due at start + i/R; when behind, it
//                                      catches up without sleeping)
//
// Prints msgs_per_s (achieved), messages and seconds.
#include <time.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#define main chat_server_demo_main
#include "../../tests/targets/chat_server.cpp"
#undef main
#pragma GCC diagnostic pop

#include "bench_protocol.h"

namespace {

constexpr uint64_t kMessagesPerUser = 3;
constexpr size_t kOnline = 12;
const char* const kRooms[] = {"lobby", "rust", "cpp", "ebpf", "random"};

// Sleeps until `deadline` (CLOCK_MONOTONIC seconds) when it is still ahead.
void wait_until(double deadline) {
    if (deadline <= bench_now()) return;
    struct timespec ts;
    ts.tv_sec = static_cast<time_t>(deadline);
    ts.tv_nsec = static_cast<long>((deadline - static_cast<double>(ts.tv_sec)) * 1e9);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
    const double seconds = bench_arg(argc, argv, "--seconds", 1.0);
    const double rate = bench_arg(argc, argv, "--rate", 0.0);
    bench_ready();

    Server server(false);
    std::deque<uint64_t> online;
    uint64_t joined = 0;
    uint64_t messages = 0;
    const double start = bench_now();
    const double until = start + seconds;
    double now = start;
    while (now < until) {
        std::string name = "user-" + std::to_string(joined) + "@chat.example.org";
        uint64_t id = server.handleJoin(name, kRooms[joined % std::size(kRooms)]);
        ++joined;
        online.push_back(id);
        for (uint64_t m = 0; m < kMessagesPerUser; ++m) {
            if (rate > 0) wait_until(start + static_cast<double>(messages) / rate);
            server.handleMessage(id, "message " + std::to_string(m) + ", hello everyone!");
            ++messages;
        }
        if (online.size() > kOnline) {
            server.handleLeave(online.front());
            online.pop_front();
        }
        now = bench_now();
    }
    const double elapsed = now - start;
    for (uint64_t id : online) server.handleLeave(id);

    std::printf("msgs_per_s %.1f\nmessages %llu\nseconds %.6f\n",
                static_cast<double>(messages) / elapsed,
                static_cast<unsigned long long>(messages), elapsed);
    bench_done();
    return 0;
}
