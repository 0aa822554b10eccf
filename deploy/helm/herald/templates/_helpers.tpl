{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name of every resource. */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "herald.gateway.fullname" -}}
{{- printf "%s-gateway" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.producer.fullname" -}}
{{- printf "%s-producer" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource, without the selector labels. */}}
{{- define "herald.baseLabels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/part-of: herald
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of resources that belong to no single component. */}}
{{- define "herald.labels" -}}
{{ include "herald.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of a component. app.kubernetes.io/name is fixed
(herald-gateway / herald-producer): the ServiceMonitor turns it into the
Prometheus `job` label that the alert rules and the dashboard select on.
*/}}
{{- define "herald.gateway.selectorLabels" -}}
app.kubernetes.io/name: herald-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.producer.selectorLabels" -}}
app.kubernetes.io/name: herald-producer
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.gateway.labels" -}}
{{ include "herald.baseLabels" . }}
{{ include "herald.gateway.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "herald.producer.labels" -}}
{{ include "herald.baseLabels" . }}
{{ include "herald.producer.selectorLabels" . }}
app.kubernetes.io/component: producer
{{- end }}

{{/*
Partition groups (gateway.partitionGroups, docs/scaling.md). The label that
tells a group's pods, Services and budgets apart; the Service selecting every
group carries it with the value "all".
*/}}
{{- define "herald.groupLabel" -}}herald.io/partition-group{{- end }}

{{/* Whether the gateway runs as several partition groups. */}}
{{- define "herald.gateway.grouped" -}}
{{- if gt (int .Values.gateway.partitionGroups) 1 }}true{{ end -}}
{{- end }}

{{/*
The gateway's groups as a JSON list, for `range ... | fromJsonArray`: [-1]
without partition groups (one Deployment, today's names and selectors),
[0, 1, ..., G-1] with them.
*/}}
{{- define "herald.gateway.groups" -}}
{{- if include "herald.gateway.grouped" . -}}
{{- until (int .Values.gateway.partitionGroups) | toJson -}}
{{- else -}}
[-1]
{{- end -}}
{{- end }}

{{/* Name of a group's Deployment, Service, HPA, PDB: (dict "root" $ "group" g); g < 0: the ungrouped name. */}}
{{- define "herald.gateway.groupName" -}}
{{- $g := int .group -}}
{{- if lt $g 0 -}}
{{- include "herald.gateway.fullname" .root -}}
{{- else -}}
{{- $suffix := printf "-g%d" $g -}}
{{- printf "%s%s" (include "herald.gateway.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}
{{- end }}

{{/* Selector labels of a group's pods: (dict "root" $ "group" g); g < 0: every gateway pod. */}}
{{- define "herald.gateway.groupSelectorLabels" -}}
{{ include "herald.gateway.selectorLabels" .root }}
{{- if ge (int .group) 0 }}
{{ include "herald.groupLabel" .root }}: {{ .group | toString | quote }}
{{- end }}
{{- end }}

{{/* Labels of a group's resources: (dict "root" $ "group" g). */}}
{{- define "herald.gateway.groupLabels" -}}
{{ include "herald.gateway.labels" .root }}
{{- if ge (int .group) 0 }}
{{ include "herald.groupLabel" .root }}: {{ .group | toString | quote }}
{{- end }}
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: (dict "root" $ "repository" "herald-gateway") */}}
{{- define "herald.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .repository $tag -}}
{{- end -}}
{{- end }}

{{/* Name of the Secret the chart creates for values given inline. */}}
{{- define "herald.secretName" -}}
{{- include "herald.fullname" . }}
{{- end }}

{{/* Whether the chart's own Secret has anything to hold. */}}
{{- define "herald.secretNeeded" -}}
{{- $v := .Values -}}
{{- if or (and $v.auth.jwt.secret (not $v.auth.jwt.existingSecret))
          (and $v.auth.jwt.publicKeys (not $v.auth.jwt.existingSecret))
          (and $v.kafka.sasl.password (not $v.kafka.sasl.existingSecret))
          (and (or $v.kafka.tls.caCert $v.kafka.tls.clientCert) (not $v.kafka.tls.existingSecret))
          (and $v.producer.enabled (or $v.producer.auth.apiKeys $v.producer.auth.jwtSecret) (not $v.producer.auth.existingSecret))
          (and $v.producer.enabled $v.producer.outbox.databaseUrl (not $v.producer.outbox.existingSecret)) -}}
true
{{- end -}}
{{- end }}

{{/* Whether any Kafka TLS file is mounted. */}}
{{- define "herald.kafka.tlsFiles" -}}
{{- $t := .Values.kafka.tls -}}
{{- if or $t.caCert $t.clientCert (and $t.existingSecret (or $t.existingSecretHasCa $t.existingSecretHasClientCert)) -}}
true
{{- end -}}
{{- end }}

{{/* Fail early on settings that cannot work. */}}
{{- define "herald.validate" -}}
{{- $v := .Values -}}
{{- if not $v.kafka.brokers -}}
{{- fail "kafka.brokers is required: the Kafka bootstrap servers, host:port[,host:port]" -}}
{{- end -}}
{{- if not (has $v.kafka.securityProtocol (list "plaintext" "ssl" "sasl_plaintext" "sasl_ssl")) -}}
{{- fail (printf "kafka.securityProtocol must be plaintext, ssl, sasl_plaintext or sasl_ssl, not %q" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if hasPrefix "sasl" $v.kafka.securityProtocol -}}
{{- if not (has $v.kafka.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) -}}
{{- fail "kafka.sasl.mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a sasl_* security protocol" -}}
{{- end -}}
{{- if or (not $v.kafka.sasl.username) (and (not $v.kafka.sasl.password) (not $v.kafka.sasl.existingSecret)) -}}
{{- fail "kafka.sasl.username and kafka.sasl.password (or kafka.sasl.existingSecret) are required with a sasl_* security protocol" -}}
{{- end -}}
{{- end -}}
{{- if and $v.kafka.tls.clientCert (not $v.kafka.tls.clientKey) -}}
{{- fail "kafka.tls.clientKey is required with kafka.tls.clientCert" -}}
{{- end -}}
{{- if not (or $v.auth.jwt.secret $v.auth.jwt.publicKeys $v.auth.jwt.existingSecret) -}}
{{- fail "the gateway needs a JWT key: set auth.jwt.secret (HS256), auth.jwt.publicKeys (RS256/ES256 PEM) or auth.jwt.existingSecret" -}}
{{- end -}}
{{- if and $v.auth.jwt.secret (lt (len $v.auth.jwt.secret) 16) -}}
{{- fail "auth.jwt.secret must be at least 16 bytes" -}}
{{- end -}}
{{- $pa := $v.producer.auth -}}
{{- if and $v.producer.enabled (not (or $pa.apiKeys $pa.jwtSecret $pa.existingSecret $pa.allowUnauthenticated)) -}}
{{- fail "the producer needs API credentials: set producer.auth.apiKeys, producer.auth.jwtSecret or producer.auth.existingSecret (producer.auth.allowUnauthenticated=true is for development only)" -}}
{{- end -}}
{{- if and $pa.existingSecret (not (or $pa.existingSecretApiKeysKey $pa.existingSecretJwtSecretKey)) -}}
{{- fail "producer.auth.existingSecret needs existingSecretApiKeysKey and/or existingSecretJwtSecretKey" -}}
{{- end -}}
{{- if and $pa.jwtSecret (lt (len $pa.jwtSecret) 32) -}}
{{- fail "producer.auth.jwtSecret must be at least 32 bytes" -}}
{{- end -}}
{{- $groups := int $v.gateway.partitionGroups -}}
{{- $gatewayEnv := keys $v.gateway.env -}}
{{- range $v.gateway.extraEnv -}}
{{- $gatewayEnv = append $gatewayEnv (toString .name) -}}
{{- end -}}
{{- range (list "HERALD_PARTITION_GROUPS" "HERALD_PARTITION_GROUP") -}}
{{- if has . $gatewayEnv -}}
{{- fail (printf "gateway.env / gateway.extraEnv set %s: use gateway.partitionGroups instead (the chart renders one Deployment per group, each with its group)" .) -}}
{{- end -}}
{{- end -}}
{{- if gt $groups 1 -}}
{{- range (list "HERALD_GROUP_URL_TEMPLATE" "HERALD_GROUP_URLS") -}}
{{- if has . $gatewayEnv -}}
{{- fail (printf "gateway.env / gateway.extraEnv set %s: with gateway.partitionGroups > 1 use gateway.groupUrlTemplate instead" .) -}}
{{- end -}}
{{- end -}}
{{- $t := $v.gateway.groupUrlTemplate -}}
{{- if not $t -}}
{{- fail (printf "gateway.groupUrlTemplate is required with gateway.partitionGroups %d: each group's public base URL, {group} standing for its number, e.g. wss://%s%s/{group} (where redirects and /v1/route send clients)" $groups (include "herald.gateway.exampleHost" .) $v.gateway.ingress.groupPathPrefix) -}}
{{- end -}}
{{- if not (contains "{group}" $t) -}}
{{- fail (printf "gateway.groupUrlTemplate %q must contain {group} (each group has its own URL), e.g. wss://%s%s/{group}" $t (include "herald.gateway.exampleHost" .) $v.gateway.ingress.groupPathPrefix) -}}
{{- end -}}
{{- if not (or (hasPrefix "ws://" $t) (hasPrefix "wss://" $t)) -}}
{{- fail (printf "gateway.groupUrlTemplate %q must be a ws:// or wss:// URL" $t) -}}
{{- end -}}
{{- $longest := replace "{group}" (toString (sub $groups 1)) $t -}}
{{- if gt (len $longest) 123 -}}
{{- fail (printf "gateway.groupUrlTemplate gives URLs of up to %d bytes (%s): at most 123 fit in a WebSocket close reason" (len $longest) $longest) -}}
{{- end -}}
{{- if and $v.gateway.ingress.enabled (not (contains (printf "%s/{group}" $v.gateway.ingress.groupPathPrefix) $t)) -}}
{{- fail (printf "gateway.groupUrlTemplate %q does not contain %s/{group}, the path under which the chart's Ingress routes each group (gateway.ingress.groupPathPrefix): redirected clients would not reach their group" $t $v.gateway.ingress.groupPathPrefix) -}}
{{- end -}}
{{- if mod (int $v.topics.partitions) $groups -}}
{{- fail (printf "topics.partitions (%d) must be a multiple of gateway.partitionGroups (%d): a group owns the partitions p with p %% %d == g, and an account must belong to one group in every topic (the gateways stay unready otherwise). With topics.create=false, set topics.partitions to your topics' partition count" (int $v.topics.partitions) $groups $groups) -}}
{{- end -}}
{{- end -}}
{{- $otlpEnv := list "HERALD_OTLP_ENDPOINT" "HERALD_OTLP_SAMPLE_RATIO" "HERALD_OTLP_SERVICE_NAME" -}}
{{- if $v.otlp.endpoint -}}
{{- $producerEnv := keys $v.producer.env -}}
{{- range $v.producer.extraEnv -}}
{{- $producerEnv = append $producerEnv (toString .name) -}}
{{- end -}}
{{- range $otlpEnv -}}
{{- if or (has . $gatewayEnv) (has . $producerEnv) -}}
{{- fail (printf "%s is set both by otlp.* and in gateway/producer env: use otlp.* only" .) -}}
{{- end -}}
{{- end -}}
{{- if not (or (hasPrefix "http://" $v.otlp.endpoint) (hasPrefix "https://" $v.otlp.endpoint)) -}}
{{- fail (printf "otlp.endpoint %q must be an http:// or https:// URL (the collector's OTLP/HTTP base, e.g. http://otel-collector.observability:4318)" $v.otlp.endpoint) -}}
{{- end -}}
{{- end -}}
{{- $minGrace := add $v.gateway.drainDelaySeconds $v.gateway.drainSeconds -}}
{{- if and $v.gateway.terminationGracePeriodSeconds (le (int $v.gateway.terminationGracePeriodSeconds) (int $minGrace)) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%v) must exceed drainDelaySeconds + drainSeconds (%v), or the drain is cut short" $v.gateway.terminationGracePeriodSeconds $minGrace) -}}
{{- end -}}
{{- end }}

{{/* HERALD_KAFKA_PROPERTY: kafka.properties plus the mutual-TLS file locations. */}}
{{- define "herald.kafka.properties" -}}
{{- $props := list -}}
{{- range $k, $val := .Values.kafka.properties -}}
{{- $props = append $props (printf "%s=%v" $k $val) -}}
{{- end -}}
{{- $t := .Values.kafka.tls -}}
{{- if or $t.clientCert (and $t.existingSecret $t.existingSecretHasClientCert) -}}
{{- $props = append $props "ssl.certificate.location=/etc/herald/kafka-tls/tls.crt" -}}
{{- $props = append $props "ssl.key.location=/etc/herald/kafka-tls/tls.key" -}}
{{- end -}}
{{- join "," $props -}}
{{- end }}

{{/* Kafka client environment shared by both services. */}}
{{- define "herald.kafka.env" -}}
- name: HERALD_KAFKA_BROKERS
  value: {{ .Values.kafka.brokers | quote }}
- name: HERALD_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: HERALD_PARTITIONER
  value: {{ .Values.kafka.partitioner | default "consistent_random" | quote }}
- name: HERALD_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "sasl" .Values.kafka.securityProtocol }}
- name: HERALD_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: HERALD_KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: HERALD_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | default (include "herald.secretName" .) }}
      key: {{ if .Values.kafka.sasl.existingSecret }}{{ .Values.kafka.sasl.existingSecretPasswordKey }}{{ else }}kafka-sasl-password{{ end }}
{{- end }}
{{- if or .Values.kafka.tls.caCert (and .Values.kafka.tls.existingSecret .Values.kafka.tls.existingSecretHasCa) }}
- name: HERALD_KAFKA_SSL_CA_LOCATION
  value: /etc/herald/kafka-tls/ca.crt
{{- end }}
{{- with include "herald.kafka.properties" . }}
- name: HERALD_KAFKA_PROPERTY
  value: {{ . | quote }}
{{- end }}
- name: HERALD_LOG_FORMAT
  value: json
{{- end }}

{{/* The Kafka TLS volume (chart Secret items or the existing Secret). */}}
{{- define "herald.kafka.tlsVolume" -}}
- name: kafka-tls
  secret:
    {{- if .Values.kafka.tls.existingSecret }}
    secretName: {{ .Values.kafka.tls.existingSecret }}
    items:
      {{- if .Values.kafka.tls.existingSecretHasCa }}
      - {key: ca.crt, path: ca.crt}
      {{- end }}
      {{- if .Values.kafka.tls.existingSecretHasClientCert }}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      {{- end }}
    {{- else }}
    secretName: {{ include "herald.secretName" . }}
    items:
      {{- if .Values.kafka.tls.caCert }}
      - {key: kafka-ca.crt, path: ca.crt}
      {{- end }}
      {{- if .Values.kafka.tls.clientCert }}
      - {key: kafka-tls.crt, path: tls.crt}
      - {key: kafka-tls.key, path: tls.key}
      {{- end }}
    {{- end }}
{{- end }}

{{/* Default topology spread: pods of one component over nodes and zones. */}}
{{- define "herald.topologySpread" -}}
{{- $labels := .labels -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- $labels | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- $labels | nindent 6 }}
{{- end }}

{{/* A host for examples in messages: the first ingress host. */}}
{{- define "herald.gateway.exampleHost" -}}
{{- $h := first (.Values.gateway.ingress.hosts | default (list (dict "host" "realtime.example.com"))) -}}
{{- $h.host | default "realtime.example.com" -}}
{{- end }}

{{/* OTLP span export (otlp.*): (dict "root" $ "serviceName" name); nothing without otlp.endpoint. */}}
{{- define "herald.otlp.env" -}}
{{- $o := .root.Values.otlp -}}
{{- if $o.endpoint }}
- name: HERALD_OTLP_ENDPOINT
  value: {{ $o.endpoint | quote }}
- name: HERALD_OTLP_SAMPLE_RATIO
  value: {{ $o.sampleRatio | toString | quote }}
{{- with .serviceName }}
- name: HERALD_OTLP_SERVICE_NAME
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
