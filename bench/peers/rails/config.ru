# A minimal Rails ActionCable app for herald-loadgen's peers mode (README
# "Herald and its peers"): ActionCable from Debian's ruby-actioncable with
# the Redis adapter, one channel streaming per account, and an HTTP endpoint
# that broadcasts from Ruby. Started by herald-loadgen through puma.
require "json"
require "logger"
require "openssl"
require "base64"
require "action_cable"

JWT_SECRET = ENV.fetch("JWT_SECRET")

# HS256 JWT check (the load generator signs the same tokens as for Herald).
# (config.ru runs inside a Rack::Builder: a module keeps it reachable.)
module PeersJwt
def self.verify(token)
  head, body, sig = token.to_s.split(".")
  return nil unless head && body && sig
  want = Base64.urlsafe_encode64(OpenSSL::HMAC.digest("SHA256", JWT_SECRET, "#{head}.#{body}"), padding: false)
  return nil unless want.bytesize == sig.bytesize && OpenSSL.fixed_length_secure_compare(want, sig)
  claims = JSON.parse(Base64.urlsafe_decode64(body + "=" * ((4 - body.length % 4) % 4)))
  return nil if claims["exp"] && claims["exp"] < Time.now.to_i
  claims
end
end

module ApplicationCable
  class Connection < ActionCable::Connection::Base
    identified_by :user_id, :account_id

    def connect
      claims = PeersJwt.verify(request.params["token"])
      reject_unauthorized_connection unless claims
      self.user_id = claims["sub"]
      self.account_id = claims["account_id"]
    end
  end
end

class AccountChannel < ActionCable::Channel::Base
  def subscribed
    stream_from "account-#{account_id}"
  end
end

ActionCable.server.config.tap do |c|
  c.cable = { "adapter" => "redis", "url" => ENV.fetch("REDIS_URL"), "channel_prefix" => "peers" }
  c.connection_class = -> { ApplicationCable::Connection }
  c.disable_request_forgery_protection = true
  c.logger = ENV["CABLE_LOG"] ? Logger.new($stderr) : Logger.new(nil)
  c.worker_pool_size = Integer(ENV.fetch("CABLE_WORKERS", "4"))
end

# POST /broadcast?stream=NAME with a JSON body: ActionCable.server.broadcast.
BROADCAST = lambda do |env|
  req = Rack::Request.new(env)
  stream = req.params["stream"]
  return [400, {}, ["stream?"]] unless stream && req.post?
  ActionCable.server.broadcast(stream, JSON.parse(req.body.read))
  [204, {}, []]
end

map("/cable") { run ActionCable.server }
map("/broadcast") { run BROADCAST }
map("/up") { run ->(_) { [200, {}, ["ok"]] } }
