// chat_server: a tiny in-process chat server, and the kind of leak leakbpf is for.
//
// Users join rooms, post messages and leave. A room fans each message out to its
// members through an EventManager, which keeps one EventCallback (a std::function
// plus bookkeeping) per subscription.
//
// THE BUG (default): ChatRoom::addUser subscribes the new member, and
// EventManager::subscribe allocates an EventCallback with `new`. The room keeps only
// the callback's id, and when the member leaves, EventManager::unsubscribe erases the
// map entry but never deletes the callback. Every join leaks sizeof(EventCallback)
// bytes, all allocated at the same stack:
//
//     EventManager::subscribe  <-  ChatRoom::addUser  <-  Server::handleJoin
//
// THE FIX (--fixed): the membership owns the Subscription that subscribe returns; when
// the member leaves, its destructor calls EventManager::cancel, which also deletes.
//
// Usage: chat_server [--joins N] [--messages M] [--fixed] [--wait]
//                    [--duration SECS] [--rate MSGS_PER_SEC]
//
//   --joins N         users who join (default 1000); each posts, then leaves later
//   --messages M      messages each user posts (default 3)
//   --duration SECS   instead of N joins, keep users coming for SECS seconds, about one
//                     join per millisecond, so a tracer sees the leak grow
//   --rate R          post at most R messages per second
//   --wait            print "ready", wait for a line on stdin, work, print the truth
//                     and "done", then wait for EOF on stdin (the test protocol)
//
// At the end it prints what it leaked, as counted by EventCallback itself:
//   {"truth":{"function":"EventManager::subscribe","bytes":...,"count":...,...}}

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

#define NOINLINE __attribute__((noinline))

struct Message {
    std::string room;
    std::string from;
    std::string text;
};

using Handler = std::function<void(const Message&)>;

// One subscriber's callback. The label makes the size unusual, so it stands out.
struct EventCallback {
    EventCallback(uint64_t id, const std::string& topic, Handler handler)
        : id(id), handler(std::move(handler)) {
        std::snprintf(label, sizeof label, "%s#%llu", topic.c_str(),
                      static_cast<unsigned long long>(id));
        ++live;
    }
    ~EventCallback() { --live; }
    EventCallback(const EventCallback&) = delete;
    EventCallback& operator=(const EventCallback&) = delete;

    uint64_t id;
    Handler handler;
    uint64_t deliveries = 0;
    char label[136];

    // Constructed and not yet destroyed: what the program holds, or has leaked.
    static inline uint64_t live = 0;
};

class EventManager;

// Owns one subscription: cancels it, callback and all, when destroyed.
class Subscription {
public:
    Subscription(EventManager& events, uint64_t id) : events_(&events), id_(id) {}
    Subscription(Subscription&& other) noexcept
        : events_(std::exchange(other.events_, nullptr)), id_(other.id_) {}
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;
    Subscription& operator=(Subscription&&) = delete;
    ~Subscription();

    // Gives up ownership, leaving the caller to unsubscribe by id (the old way).
    uint64_t detach() {
        events_ = nullptr;
        return id_;
    }

private:
    EventManager* events_;
    uint64_t id_;
};

class EventManager {
public:
    EventManager() = default;
    EventManager(const EventManager&) = delete;
    EventManager& operator=(const EventManager&) = delete;
    ~EventManager() {
        for (auto& entry : callbacks_) delete entry.second.callback;
    }

    NOINLINE Subscription subscribe(const std::string& topic, Handler handler) {
        auto* callback = new EventCallback(nextId_++, topic, std::move(handler));
        add(topic, callback);
        return Subscription(*this, callback->id);
    }

    // THE BUG: forgets the callback without deleting it.
    NOINLINE void unsubscribe(uint64_t id) { remove(id); }

    // What Subscription calls: forgets the callback and deletes it.
    NOINLINE void cancel(uint64_t id) { delete remove(id); }

    void publish(const Message& message) {
        auto subscribers = topics_.find(message.room);
        if (subscribers == topics_.end()) return;
        for (EventCallback* callback : subscribers->second) {
            ++callback->deliveries;
            callback->handler(message);
        }
    }

private:
    struct Entry {
        EventCallback* callback;
        std::string topic;
    };

    NOINLINE void add(const std::string& topic, EventCallback* callback) {
        callbacks_.emplace(callback->id, Entry{callback, topic});
        topics_[topic].push_back(callback);
    }

    NOINLINE EventCallback* remove(uint64_t id) {
        auto entry = callbacks_.find(id);
        if (entry == callbacks_.end()) return nullptr;
        EventCallback* callback = entry->second.callback;
        auto& subscribers = topics_[entry->second.topic];
        subscribers.erase(std::remove(subscribers.begin(), subscribers.end(), callback),
                          subscribers.end());
        callbacks_.erase(entry);
        return callback;
    }

    uint64_t nextId_ = 1;
    std::unordered_map<uint64_t, Entry> callbacks_;
    std::unordered_map<std::string, std::vector<EventCallback*>> topics_;
};

Subscription::~Subscription() {
    if (events_ != nullptr) events_->cancel(id_);
}

struct User {
    uint64_t id;
    std::string name;
    std::deque<std::string> inbox;  // the last few messages, as a client would show
    uint64_t received = 0;

    void receive(const Message& message) {
        ++received;
        inbox.push_back(message.from + ": " + message.text);
        if (inbox.size() > 8) inbox.pop_front();
    }
};

class ChatRoom {
public:
    ChatRoom(std::string name, EventManager& events, bool fixed)
        : name_(std::move(name)), events_(events), fixed_(fixed) {}

    NOINLINE void addUser(User& user) {
        Subscription subscription =
            events_.subscribe(name_, [&user](const Message& message) { user.receive(message); });
        Membership membership;
        if (fixed_) {
            membership.subscription.emplace(std::move(subscription));
        } else {
            membership.callbackId = subscription.detach();
        }
        members_.emplace(user.id, std::move(membership));
    }

    NOINLINE void removeUser(const User& user) {
        auto membership = members_.find(user.id);
        if (membership == members_.end()) return;
        if (!membership->second.subscription) events_.unsubscribe(membership->second.callbackId);
        members_.erase(membership);  // with --fixed, ~Subscription cancels the callback
    }

    void post(const User& from, const std::string& text) {
        events_.publish(Message{name_, from.name, text});
    }

private:
    struct Membership {
        uint64_t callbackId = 0;                   // the buggy build keeps only the id
        std::optional<Subscription> subscription;  // the fixed build owns the callback
    };

    std::string name_;
    EventManager& events_;
    bool fixed_;
    std::unordered_map<uint64_t, Membership> members_;
};

class Server {
public:
    explicit Server(bool fixed) : fixed_(fixed) {}

    NOINLINE uint64_t handleJoin(const std::string& userName, const std::string& roomName) {
        auto user = std::make_unique<User>();
        user->id = nextUserId_++;
        user->name = userName;
        ChatRoom& chatRoom = room(roomName);
        chatRoom.addUser(*user);
        uint64_t id = user->id;
        users_.emplace(id, Online{std::move(user), &chatRoom});
        return id;
    }

    NOINLINE void handleMessage(uint64_t userId, const std::string& text) {
        const Online& online = users_.at(userId);
        online.room->post(*online.user, text);
    }

    NOINLINE void handleLeave(uint64_t userId) {
        auto online = users_.find(userId);
        if (online == users_.end()) return;
        online->second.room->removeUser(*online->second.user);
        users_.erase(online);
    }

private:
    struct Online {
        std::unique_ptr<User> user;
        ChatRoom* room;
    };

    ChatRoom& room(const std::string& name) {
        auto& slot = rooms_[name];
        if (!slot) slot = std::make_unique<ChatRoom>(name, events_, fixed_);
        return *slot;
    }

    // Declared first so it is destroyed last: rooms cancel subscriptions as they go.
    EventManager events_;
    bool fixed_;
    std::map<std::string, std::unique_ptr<ChatRoom>> rooms_;
    std::unordered_map<uint64_t, Online> users_;
    uint64_t nextUserId_ = 1;
};

struct Options {
    uint64_t joins = 1000;
    uint64_t messages = 3;
    bool fixed = false;
    bool wait = false;
    double duration = 0;
    double rate = 0;
};

[[noreturn]] static void usage() {
    std::cerr << "usage: chat_server [--joins N] [--messages M] [--fixed] [--wait]\n"
                 "                   [--duration SECS] [--rate MSGS_PER_SEC]\n";
    std::exit(2);
}

static Options parse(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : (usage(), ""); };
        if (arg == "--joins") options.joins = std::strtoull(value(), nullptr, 10);
        else if (arg == "--messages") options.messages = std::strtoull(value(), nullptr, 10);
        else if (arg == "--duration") options.duration = std::strtod(value(), nullptr);
        else if (arg == "--rate") options.rate = std::strtod(value(), nullptr);
        else if (arg == "--fixed") options.fixed = true;
        else if (arg == "--wait") options.wait = true;
        else usage();
    }
    return options;
}

// Users come, talk, and leave once kOnline newer users have joined; the rest leave at
// the end. Returns how many joined.
static uint64_t simulate(const Options& options) {
    using Clock = std::chrono::steady_clock;
    static const char* const kRooms[] = {"lobby", "rust", "cpp", "ebpf", "random"};
    constexpr size_t kOnline = 12;

    Server server(options.fixed);
    std::deque<uint64_t> online;
    uint64_t joined = 0;
    const auto start = Clock::now();
    const auto until = start + std::chrono::duration<double>(options.duration);
    auto more = [&] {
        return options.duration > 0 ? Clock::now() < until : joined < options.joins;
    };
    while (more()) {
        std::string name = "user-" + std::to_string(joined) + "@chat.example.org";
        uint64_t id = server.handleJoin(name, kRooms[joined % std::size(kRooms)]);
        ++joined;
        online.push_back(id);
        for (uint64_t m = 0; m < options.messages; ++m) {
            server.handleMessage(id, "message " + std::to_string(m) + ", hello everyone!");
            if (options.rate > 0)
                std::this_thread::sleep_for(std::chrono::duration<double>(1.0 / options.rate));
        }
        if (online.size() > kOnline) {
            server.handleLeave(online.front());
            online.pop_front();
        }
        if (options.duration > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    for (uint64_t id : online) server.handleLeave(id);
    return joined;
}

int main(int argc, char** argv) {
    const Options options = parse(argc, argv);
    if (options.wait) {
        std::cout << "ready" << std::endl;
        std::string go;
        if (!std::getline(std::cin, go)) return 1;
    }
    if (options.duration > 0)
        std::cerr << "chat_server: pid " << getpid() << ", " << (options.fixed ? "fixed" : "buggy")
                  << " build, running for " << options.duration << " s" << std::endl;

    const uint64_t joins = simulate(options);  // the server is gone: what is left leaked

    std::cout << "{\"truth\":{\"function\":\"EventManager::subscribe\",\"bytes\":"
              << EventCallback::live * sizeof(EventCallback)
              << ",\"count\":" << EventCallback::live << ",\"sizeof\":" << sizeof(EventCallback)
              << ",\"joins\":" << joins << ",\"fixed\":" << (options.fixed ? "true" : "false")
              << "}}\n"
              << "done" << std::endl;

    if (options.wait) {
        std::string line;
        while (std::getline(std::cin, line)) {
        }
    }
    return 0;
}
