-- wrk script for scripts/bench.sh's `unique` scenario: every request pushes a
-- new `noop` task (oha's -Z picks body lines at random, so 6-12% of its task
-- ids repeat). Each thread counts under its own prefix; the bearer token is
-- $TOKEN. With $REPEAT set, every request pushes that one task id instead (a
-- redelivery storm; scripts/instructions.sh). done() prints one JSON line,
-- the last of wrk's output.
local threads = {}
local counter = 0

function setup(thread)
    counter = counter + 1
    thread:set("prefix", "unique-" .. (os.getenv("RUN") or "") .. "-" .. counter .. "-")
    table.insert(threads, thread)
end

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(text)
    local out = {}
    for i = 1, #text, 3 do
        local a, b, c = text:byte(i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local quad = {}
        for k = 4, 1, -1 do
            local index = n % 64
            n = (n - index) / 64
            quad[k] = alphabet:sub(index + 1, index + 1)
        end
        if not b then quad[3] = "=" end
        if not c then quad[4] = "=" end
        out[#out + 1] = table.concat(quad)
    end
    return table.concat(out)
end

local sent = 0

function init()
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    local token = os.getenv("TOKEN")
    if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
end

local repeated = os.getenv("REPEAT")
if repeated == "" then repeated = nil end

function request()
    sent = sent + 1
    local task_id = repeated or (prefix .. sent)
    local payload = '{"task_id":"' .. task_id .. '","task_name":"noop","args":[],"kwargs":{}}'
    local body = '{"message":{"data":"' .. base64(payload) .. '","messageId":"' .. task_id ..
        '"},"subscription":"projects/bench/subscriptions/bench"}'
    return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format(
        '{"requests":%d,"seconds":%f,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
        '"p50_ms":%f,"p99_ms":%f,"max_ms":%f}\n',
        summary.requests, summary.duration / 1e6, errors.status, errors.connect, errors.read, errors.write,
        errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
