{{/*
Names and labels.
*/}}
{{- define "salesflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "salesflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one pipeline's objects: (dict "root" $ "name" PIPELINE) */}}
{{- define "salesflow.pipelineFullname" -}}
{{- printf "%s-%s" (include "salesflow.fullname" .root | trunc (int (sub 62 (len .name)))) .name | trimSuffix "-" -}}
{{- end -}}

{{- define "salesflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "salesflow.labels" -}}
helm.sh/chart: {{ include "salesflow.chart" . }}
app.kubernetes.io/name: {{ include "salesflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: salesflow
{{- end -}}

{{/* (dict "root" $ "name" PIPELINE) */}}
{{- define "salesflow.pipelineLabels" -}}
{{ include "salesflow.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* (dict "root" $ "name" PIPELINE) */}}
{{- define "salesflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "salesflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "salesflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "salesflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "salesflow.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "salesflow.imagePullPolicy" -}}
{{- if .Values.image.pullPolicy -}}
{{- .Values.image.pullPolicy -}}
{{- else if .Values.image.digest -}}
IfNotPresent
{{- else -}}
Always
{{- end -}}
{{- end -}}

{{/*
pipeline.toml as given (values pipelineToml, else files/pipeline.toml), before the
chart's [kafka.properties] is appended.
*/}}
{{- define "salesflow.baseToml" -}}
{{- if .Values.pipelineToml -}}
{{- .Values.pipelineToml -}}
{{- else -}}
{{- .Files.Get "files/pipeline.toml" -}}
{{- end -}}
{{- end -}}

{{/* The parsed pipeline.toml; fails on a file that is not TOML. */}}
{{- define "salesflow.parsedToml" -}}
{{- $parsed := include "salesflow.baseToml" . | fromToml -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "pipeline.toml is not valid TOML: %s" (get $parsed "Error")) -}}
{{- end -}}
{{- toJson $parsed -}}
{{- end -}}

{{/* Where the Kafka TLS Secrets are mounted. */}}
{{- define "salesflow.kafkaCaDir" -}}/etc/salesflow/kafka-ca{{- end -}}
{{- define "salesflow.kafkaClientDir" -}}/etc/salesflow/kafka-client{{- end -}}

{{/*
The librdkafka properties the chart writes into [kafka.properties]: values
kafka.properties plus the TLS files' locations. A dict, as JSON.
*/}}
{{- define "salesflow.kafkaProperties" -}}
{{- $props := dict -}}
{{- range $key, $value := .Values.kafka.properties -}}
{{- if regexMatch "password|secret|token|credential|key\\.pem|keystore|private|keys?$" (lower $key) -}}
{{- fail (printf "kafka.properties.%s looks like a secret: give it in kafka.secretProperties (from a Secret), not in values that end up in a ConfigMap" $key) -}}
{{- end -}}
{{- $_ := set $props $key (toString $value) -}}
{{- end -}}
{{- $tls := .Values.kafka.tls -}}
{{- if $tls.caSecret.name -}}
{{- $_ := set $props "ssl.ca.location" (printf "%s/%s" (include "salesflow.kafkaCaDir" .) $tls.caSecret.key) -}}
{{- end -}}
{{- if $tls.clientSecret.name -}}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/%s" (include "salesflow.kafkaClientDir" .) $tls.clientSecret.certKey) -}}
{{- $_ := set $props "ssl.key.location" (printf "%s/%s" (include "salesflow.kafkaClientDir" .) $tls.clientSecret.keyKey) -}}
{{- end -}}
{{- if and (or $tls.caSecret.name $tls.clientSecret.name) (not (hasKey $props "security.protocol")) -}}
{{- $_ := set $props "security.protocol" "SSL" -}}
{{- end -}}
{{- toJson $props -}}
{{- end -}}

{{/* The pipeline.toml the pods read: the given file, then the chart's [kafka.properties]. */}}
{{- define "salesflow.pipelineToml" -}}
{{- $base := include "salesflow.baseToml" . -}}
{{- $parsed := include "salesflow.parsedToml" . | fromJson -}}
{{- $props := include "salesflow.kafkaProperties" . | fromJson -}}
{{- if not $props -}}
{{- $base -}}
{{- else -}}
{{- if hasKey (get $parsed "kafka" | default dict) "properties" -}}
{{- fail "pipeline.toml already sets kafka.properties: give librdkafka properties either there or in values kafka.properties and kafka.tls, not both" -}}
{{- end -}}
{{- $lines := list "" "# Written by the Helm chart (values kafka.properties and kafka.tls)." "[kafka.properties]" -}}
{{- range $key := keys $props | sortAlpha -}}
{{- $lines = append $lines (printf "%s = %s" (toJson $key) (toJson (get $props $key))) -}}
{{- end -}}
{{- printf "%s\n%s\n" (trimSuffix "\n" $base) (join "\n" $lines) -}}
{{- end -}}
{{- end -}}

{{/*
The one Kafka source of a pipeline in pipeline.toml, for the KEDA scaler's consumer
group and topic: (dict "root" $ "name" PIPELINE). A dict with group and topic, as JSON.
*/}}
{{- define "salesflow.kafkaSource" -}}
{{- $parsed := include "salesflow.parsedToml" .root | fromJson -}}
{{- $pipeline := index $parsed.pipelines .name -}}
{{- $found := list -}}
{{- range $sourceName, $source := ($pipeline.sources | default dict) -}}
{{- if eq (toString $source.type) "kafka" -}}
{{- range $topic := $source.topics -}}
{{- $found = append $found (dict "group" $source.group_id "topic" $topic) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* Comma-separated bootstrap servers. */}}
{{- define "salesflow.bootstrapServers" -}}
{{- $servers := .Values.kafka.bootstrapServers -}}
{{- if kindIs "slice" $servers -}}
{{- join "," $servers -}}
{{- else -}}
{{- $servers -}}
{{- end -}}
{{- end -}}

{{/* Whether a pipeline uses a server: (dict "pipeline" $p "server" NAME) -> "true" or "" */}}
{{- define "salesflow.uses" -}}
{{- if has .server (.pipeline.uses | default list) -}}true{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds of a pipeline's pods: (dict "root" $ "pipeline" $p) */}}
{{- define "salesflow.terminationGrace" -}}
{{- $server := .root.Values.server -}}
{{- add (int (.pipeline.preStopSleepSeconds | default 0)) (int $server.shutdownGraceSeconds) (int $server.terminationMarginSeconds) -}}
{{- end -}}

{{/*
The environment of a pipeline's container: the connections (every pod, so that each
process validates the same configuration) and, only where the pipeline uses the server,
its credentials. (dict "root" $ "name" PIPELINE "pipeline" $p)
*/}}
{{- define "salesflow.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $p := .pipeline -}}
- name: SALESFLOW__SERVER__ADDRESS
  value: {{ printf "0.0.0.0:%d" (int $v.server.port) | quote }}
- name: SALESFLOW__SERVER__SHUTDOWN_GRACE
  value: {{ printf "%ds" (int $v.server.shutdownGraceSeconds) | quote }}
- name: SALESFLOW__LOG__LEVEL
  value: {{ $v.log.level | quote }}
- name: SALESFLOW__LOG__FORMAT
  value: {{ $v.log.format | quote }}
- name: SALESFLOW__KAFKA__BOOTSTRAP_SERVERS
  value: {{ include "salesflow.bootstrapServers" $root | quote }}
- name: SALESFLOW__CASSANDRA__NODES
  value: {{ toJson $v.cassandra.nodes | quote }}
- name: SALESFLOW__CASSANDRA__KEYSPACE
  value: {{ $v.cassandra.keyspace | quote }}
{{- if $v.cassandra.localDatacenter }}
- name: SALESFLOW__CASSANDRA__LOCAL_DATACENTER
  value: {{ $v.cassandra.localDatacenter | quote }}
{{- end }}
- name: SALESFLOW__ELASTICSEARCH__URL
  value: {{ $v.elasticsearch.url | quote }}
{{- if include "salesflow.uses" (dict "pipeline" $p "server" "kafka") }}
{{- range $property := keys $v.kafka.secretProperties | sortAlpha }}
{{- $ref := get $v.kafka.secretProperties $property }}
{{- if not (regexMatch "password|secret|token|credential|key\\.pem|keystore|private|keys?$" (lower $property)) }}
{{- fail (printf "kafka.secretProperties.%s: salesflow takes only secret-looking librdkafka properties (password, secret, token, credential, keystore, private, key.pem, ...key) from the environment; give this one in kafka.properties" $property) }}
{{- end }}
- name: {{ printf "SALESFLOW__KAFKA__PROPERTIES__%s" (upper $property) }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "kafka.secretProperties.%s.secretName is required" $property) $ref.secretName }}
      key: {{ required (printf "kafka.secretProperties.%s.secretKey is required" $property) $ref.secretKey }}
{{- end }}
{{- end }}
{{- range $server := list "cassandra" "elasticsearch" }}
{{- $auth := (get $v $server).auth }}
{{- if and (include "salesflow.uses" (dict "pipeline" $p "server" $server)) $auth.existingSecret }}
{{- if $auth.username }}
- name: {{ printf "SALESFLOW__%s__USERNAME" (upper $server) }}
  value: {{ $auth.username | quote }}
{{- else }}
- name: {{ printf "SALESFLOW__%s__USERNAME" (upper $server) }}
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ required (printf "%s.auth: username or usernameKey is required with existingSecret" $server) $auth.usernameKey }}
{{- end }}
- name: {{ printf "SALESFLOW__%s__PASSWORD" (upper $server) }}
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ required (printf "%s.auth.passwordKey is required" $server) $auth.passwordKey }}
{{- else if and $auth.username (not $auth.existingSecret) }}
{{- fail (printf "%s.auth.username is set without existingSecret: the password comes only from a Secret" $server) }}
{{- end }}
{{- end }}
{{- if and $v.apiKeys.enabled $p.apiKeys }}
- name: SALESFLOW_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ required "apiKeys.existingSecret is required when apiKeys.enabled" $v.apiKeys.existingSecret }}
      key: {{ required (printf "pipelines.%s.apiKeys.secretKey is required" .name) $p.apiKeys.secretKey }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $p.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Whether a pipeline is deployed: enabled unless it says `enabled: false`. -> "true" or "" */}}
{{- define "salesflow.enabled" -}}
{{- if or (not (hasKey . "enabled")) .enabled -}}true{{- end -}}
{{- end -}}
